//! `keyhost backup` and `keyhost restore`: the whole store in one encrypted file, taken while the
//! servers run and put back into an empty store on either engine.
//!
//! **What is in it.** Every row of every table `keyhost migrate --to` copies
//! ([`crate::store::copy::TABLES`]: settings, keys with their private keys still sealed, API
//! clients, named admins, the audit trail, issuances, KYC records), value for value with its id,
//! read in one transaction (SQLite: a read transaction on the write-ahead log, which the server
//! goes on writing beside; PostgreSQL: `REPEATABLE READ`), so the rows agree with each other and
//! the audit trail with its recorded head. Also the kids the store served at that moment.
//!
//! **The file.**
//!
//! ```text
//! KEYHOSTBACKUP1\n
//! {"masterKeyId":"…","createdAt":"…","engine":"sqlite","schemaVersion":10,"layout":"…","nonce":"…"}\n
//! ciphertext and 16-byte tag
//! ```
//!
//! The first two lines are the header, in the clear so that anyone holding the file can tell
//! which master key it needs, and authenticated as the associated data of the encryption: a
//! changed byte anywhere fails the restore before anything is written. `layout` is the
//! fingerprint of the tables and columns copied ([`crate::store::copy::layout`]): a backup goes
//! back only into the same layout, whichever engine made it (`schemaVersion` is that engine's
//! migration number, for the reader).
//!
//! **The encryption.** AES-256-GCM with a random 96-bit nonce, under a key derived from the
//! master key: HMAC-SHA256, under the row-authentication key (itself HMAC-SHA256 of
//! `keyhost/v1/row-mac` under the master key), of the canonical encoding of the domain
//! `keyhost/v1/backup`, a domain no row MAC uses. Without the master key the file is useless,
//! which is intended: keep the master key backed up apart from the backups.
//!
//! The whole plaintext is one GCM message, not a sequence of chunks: the snapshot is read into
//! memory in one transaction anyway, and a restore must authenticate all of it before writing
//! a row, so chunking would save no memory on either side (a keyhost store is a few MB: keys,
//! clients, the audit trail and issuances within their retention; GCM's limit per message is
//! 64 GB).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::clock::{Clock, rfc3339};
use crate::config::Config;
use crate::integrity::RowAuth;
use crate::jwks::JwksDocument;
use crate::keys::master::{self, MasterKey, MasterKeyError};
use crate::startup;
use crate::store::copy::{self, Snapshot, TableRows};
use crate::store::sql::Value;
use crate::store::{self, EngineKind, Sealer, StoreError};

/// The first line of every backup file.
pub const MAGIC: &[u8] = b"KEYHOSTBACKUP1\n";
/// The domain of the backup key's derivation.
const KEY_DOMAIN: &str = "keyhost/v1/backup";
/// The header line is never longer than this.
const MAX_HEADER: usize = 4096;
/// The audit actions.
pub const BACKUP_ACTION: &str = "store.backup";
/// See [`BACKUP_ACTION`].
pub const RESTORE_ACTION: &str = "store.restore";

/// The clear, authenticated header of a backup file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    /// The id of the master key it is encrypted under (and its private keys sealed under).
    pub master_key_id: String,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// The engine it was taken from: `sqlite` or `postgres`.
    pub engine: String,
    /// That engine's schema version (migrations applied).
    pub schema_version: i64,
    /// The fingerprint of the tables and columns it holds.
    pub layout: String,
    /// The GCM nonce, hex.
    pub nonce: String,
}

/// What `keyhost backup` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// The file written.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its header.
    #[serde(flatten)]
    pub header: Header,
    /// Rows per table.
    pub tables: serde_json::Map<String, serde_json::Value>,
    /// The kids the store served when it was taken.
    pub served_kids: Vec<String>,
}

/// What `keyhost restore` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    /// The backup read.
    pub file: PathBuf,
    /// The store written (file, or PostgreSQL database and schema).
    pub into: String,
    /// The backup's header.
    pub backup: Header,
    /// Rows per table.
    pub tables: serde_json::Map<String, serde_json::Value>,
    /// The kids the restored store serves, as the backed-up one did.
    pub served_kids: Vec<String>,
    /// Audit rows verified after the restore (its own row included).
    pub audit_rows: u64,
}

/// The key backups are encrypted under, derived from the master key (through its row
/// authenticator, itself derived from it).
fn backup_key(auth: &RowAuth) -> LessSafeKey {
    let derived = Zeroizing::new(Sealer::mac(auth, KEY_DOMAIN, &[]));
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &derived).expect("HMAC-SHA256 is 32 bytes"))
}

fn engine_name(engine: EngineKind) -> &'static str {
    match engine {
        EngineKind::Sqlite => "sqlite",
        EngineKind::Postgres => "postgres",
    }
}

fn counts(snapshot: &Snapshot) -> serde_json::Map<String, serde_json::Value> {
    snapshot
        .counts()
        .tables
        .into_iter()
        .map(|(t, n)| (t, json!(n)))
        .collect()
}

/// Takes a snapshot of the configured store and writes it, encrypted, to `file` (created 0600,
/// never replacing a file); audited as `store.backup`. Safe beside running servers.
pub fn backup(
    config: &Config,
    clock: Arc<dyn Clock>,
    file: &Path,
    actor: &str,
) -> anyhow::Result<BackupReport> {
    if file.symlink_metadata().is_ok() {
        bail!(
            "{} exists; a backup never replaces a file: name a new one",
            file.display()
        );
    }
    // The store opens as the CLI always opens it: this master key, every private key checked.
    let opened = startup::open(config, clock.clone(), false)?;
    let store = opened.store;
    let (snapshot, schema_version, recorded, key_rows) = store.blocking_read(|tx| {
        Ok::<_, StoreError>((
            copy::snapshot(tx)?,
            copy::schema_version(tx)?,
            store::settings::get(tx, store::settings::MASTER_KEY_ID)?,
            store::keys::list(tx)?,
        ))
    })?;
    let (master, _) = master::resolve(
        config.master_key.as_ref(),
        &config.keys_dir,
        recorded.as_deref(),
    )?;
    let served_kids = JwksDocument::build(
        key_rows
            .rows
            .iter()
            .filter(|r| master.row_auth().stored_key_ok(r))
            .map(|r| &r.record),
    )
    .kids;
    let now = clock.now();
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow::anyhow!("the system RNG failed"))?;
    let header = Header {
        master_key_id: master.id().to_owned(),
        created_at: rfc3339(now),
        engine: engine_name(store.engine()).to_owned(),
        schema_version,
        layout: copy::layout(),
        nonce: hex::encode(nonce),
    };
    let contents = seal(&master, &header, nonce, &encode(&snapshot, &served_kids));
    write_new(file, &contents)?;
    let tables = counts(&snapshot);
    let audited = store.blocking_write(|tx| {
        store::audit::record(
            tx,
            now,
            actor,
            BACKUP_ACTION,
            &file.display().to_string(),
            &json!({
                "tables": tables,
                "servedKids": served_kids,
                "masterKeyId": header.master_key_id,
                "bytes": contents.len(),
            }),
        )
    });
    if let Err(e) = audited {
        // No backup without its audit row.
        let _ = std::fs::remove_file(file);
        return Err(e).context("recording the backup in the audit trail; the file was removed");
    }
    Ok(BackupReport {
        file: file.to_owned(),
        bytes: contents.len() as u64,
        header,
        tables,
        served_kids,
    })
}

/// Writes `contents` to the new file `path` (0600), synced; removes it again if that fails.
fn write_new(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = crate::files::create_private_file(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists; a backup never replaces a file: name a new one",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Reads the backup `file`, checks it against the configured master key (before anything is
/// written anywhere), writes its rows into the configured store, which must be empty, in one
/// transaction with a `store.restore` audit row, then opens the store as a server would and
/// checks that it serves the backed-up kids and that its audit trail verifies. On SQLite, no
/// server may be running on the data directory.
pub fn restore(
    config: &Config,
    clock: Arc<dyn Clock>,
    file: &Path,
    actor: &str,
) -> anyhow::Result<RestoreReport> {
    let contents =
        Zeroizing::new(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    let (header, body) = parse_header(&contents)
        .with_context(|| format!("{} is not a keyhost backup", file.display()))?;
    if header.layout != copy::layout() {
        bail!(
            "the backup {} holds the tables of another keyhost version (layout {}, {} schema \
             version {}; this keyhost's layout is {}): restore it with the keyhost that made it",
            file.display(),
            header.layout,
            header.engine,
            header.schema_version,
            copy::layout()
        );
    }
    let master = match master::resolve(
        config.master_key.as_ref(),
        &config.keys_dir,
        Some(&header.master_key_id),
    ) {
        Ok((master, _)) => master,
        Err(MasterKeyError::Mismatch {
            expected,
            found,
            file: key_file,
        }) => bail!(
            "the backup {} was made under master key {expected}, but {found}; configure that \
             master key (KEYHOST_MASTER_KEY or {key_file}) to restore it. Nothing was written",
            file.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let plaintext = open(
        &master,
        &contents[..contents.len() - body.len()],
        &header,
        body,
    )
    .with_context(|| {
        format!(
            "the backup {} does not authenticate under master key {}: it was changed or \
                 damaged after it was made. Nothing was written",
            file.display(),
            master.id()
        )
    })?;
    let (snapshot, backed_up_kids) = decode(&plaintext).with_context(|| {
        format!(
            "the backup {} authenticates but cannot be read. Nothing was written",
            file.display()
        )
    })?;
    drop(plaintext);

    // No server may write an SQLite store meanwhile (one would also have filled it).
    let _lock = match &config.database.url {
        None => Some(
            startup::lock_data_dir(config)
                .context("stop the server before restoring into its store")?,
        ),
        Some(_) => None,
    };
    let target = startup::open_store(config)?;
    target.seal_with(master.row_auth().clone());
    let now = clock.now();
    let tables = counts(&snapshot);
    target
        .blocking_write(|tx| {
            copy::ensure_empty(tx)?;
            copy::insert(tx, &snapshot)?;
            store::audit::record(
                tx,
                now,
                actor,
                RESTORE_ACTION,
                &file.display().to_string(),
                &json!({
                    "tables": tables,
                    "servedKids": backed_up_kids,
                    "backupCreatedAt": header.created_at,
                    "backupEngine": header.engine,
                }),
            )?;
            copy::renumber(tx)?;
            Ok::<_, copy::CopyError>(())
        })
        .with_context(|| format!("restoring into {}", target.location()))?;
    let into = target.location();
    drop(target);
    drop(snapshot);

    let restored = startup::open(config, clock, false)
        .context("the restored store does not open as the backed-up one did")?;
    let served_kids = JwksDocument::build(&restored.keys.list()?).kids;
    if served_kids != backed_up_kids {
        bail!(
            "the restored store would serve {served_kids:?}, not {backed_up_kids:?} as the \
             backed-up one did; do not start servers on it"
        );
    }
    let trail = crate::audit::verify(&restored.store, restored.keys.row_auth(), None)?;
    if let Some(problem) = &trail.problem {
        bail!(
            "the restored audit trail is not as keyhost wrote it: row {} {}",
            problem.row,
            problem.what
        );
    }
    Ok(RestoreReport {
        file: file.to_owned(),
        into,
        backup: header,
        tables,
        served_kids,
        audit_rows: trail.rows,
    })
}

/// The header of `contents` and what follows it.
fn parse_header(contents: &[u8]) -> anyhow::Result<(Header, &[u8])> {
    let Some(rest) = contents.strip_prefix(MAGIC) else {
        bail!("it does not begin with {:?}", "KEYHOSTBACKUP1");
    };
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|b| *b == b'\n')
        .context("its header line does not end")?;
    let header: Header =
        serde_json::from_slice(&rest[..end]).context("its header line is not keyhost's")?;
    Ok((header, &rest[end + 1..]))
}

/// The whole file: the magic line, the header line, then the encrypted payload authenticated
/// together with both lines.
fn seal(master: &MasterKey, header: &Header, nonce: [u8; NONCE_LEN], payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(header).expect("a header serialises"));
    out.push(b'\n');
    let mut body = Zeroizing::new(payload.to_vec());
    backup_key(master.row_auth())
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..]),
            &mut *body,
        )
        .expect("AES-GCM seals up to 64 GB");
    out.extend_from_slice(&body);
    out
}

/// The payload of a file whose header bytes are `aad`, parsed as `header`.
fn open(
    master: &MasterKey,
    aad: &[u8],
    header: &Header,
    body: &[u8],
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let nonce = hex::decode(&header.nonce)
        .ok()
        .and_then(|n| Nonce::try_assume_unique_for_key(&n).ok())
        .context("its nonce is not 12 bytes of hex")?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = backup_key(master.row_auth())
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| anyhow::anyhow!("authentication failed"))?
        .len();
    buf.truncate(len);
    Ok(buf)
}

const NULL: u8 = 0;
const INT: u8 = 1;
const TEXT: u8 = 2;
const BLOB: u8 = 3;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The payload: the served kids, then each table (name, columns, rows, each row its values),
/// every length a big-endian u64 and every value tagged with its kind.
fn encode(snapshot: &Snapshot, kids: &[String]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&(kids.len() as u64).to_be_bytes());
    for kid in kids {
        put_bytes(&mut out, kid.as_bytes());
    }
    out.extend_from_slice(&(snapshot.tables.len() as u64).to_be_bytes());
    for t in &snapshot.tables {
        put_bytes(&mut out, t.table.as_bytes());
        put_bytes(&mut out, t.columns.as_bytes());
        out.extend_from_slice(&(t.rows.len() as u64).to_be_bytes());
        for row in &t.rows {
            out.extend_from_slice(&(row.len() as u64).to_be_bytes());
            for value in row {
                match value {
                    Value::Null => out.push(NULL),
                    Value::Int(i) => {
                        out.push(INT);
                        out.extend_from_slice(&i.to_be_bytes());
                    }
                    Value::Text(s) => {
                        out.push(TEXT);
                        put_bytes(&mut out, s.as_bytes());
                    }
                    Value::Blob(b) => {
                        out.push(BLOB);
                        put_bytes(&mut out, b);
                    }
                }
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> anyhow::Result<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|n| *n <= self.0.len());
        let n = n.context("it ends early")?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let n = self.u64()?;
        self.take(n)
    }

    fn text(&mut self) -> anyhow::Result<String> {
        Ok(std::str::from_utf8(self.bytes()?)
            .context("text that is not UTF-8")?
            .to_owned())
    }

    fn value(&mut self) -> anyhow::Result<Value> {
        Ok(match self.take(1)?[0] {
            NULL => Value::Null,
            INT => Value::Int(i64::from_be_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            TEXT => Value::Text(self.text()?),
            BLOB => Value::Blob(self.bytes()?.to_vec()),
            other => bail!("a value of unknown kind {other}"),
        })
    }
}

/// Reads what [`encode`] wrote, all of it.
fn decode(payload: &[u8]) -> anyhow::Result<(Snapshot, Vec<String>)> {
    let mut r = Reader(payload);
    let kids = (0..r.u64()?)
        .map(|_| r.text())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut snapshot = Snapshot::default();
    for _ in 0..r.u64()? {
        let table = r.text()?;
        let columns = r.text()?;
        let rows = (0..r.u64()?)
            .map(|_| (0..r.u64()?).map(|_| r.value()).collect())
            .collect::<anyhow::Result<_>>()?;
        snapshot.tables.push(TableRows {
            table,
            columns,
            rows,
        });
    }
    if !r.0.is_empty() {
        bail!("{} bytes follow its end", r.0.len());
    }
    Ok((snapshot, kids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Snapshot, Vec<String>) {
        let snapshot = Snapshot {
            tables: vec![
                TableRows {
                    table: "settings".into(),
                    columns: "name, value, mac".into(),
                    rows: vec![
                        vec![
                            Value::Text("a".into()),
                            Value::Text("é\n".into()),
                            Value::Blob(vec![0, 255]),
                        ],
                        vec![
                            Value::Text("b".into()),
                            Value::Text(String::new()),
                            Value::Null,
                        ],
                    ],
                },
                TableRows {
                    table: "keys".into(),
                    columns: "id".into(),
                    rows: vec![vec![Value::Int(i64::MIN)], vec![Value::Int(-1)]],
                },
                TableRows {
                    table: "audit".into(),
                    columns: "id".into(),
                    rows: Vec::new(),
                },
            ],
        };
        (snapshot, vec!["kid-1".into(), "kid-2".into()])
    }

    fn header(master: &MasterKey) -> (Header, [u8; NONCE_LEN]) {
        let nonce = [7; NONCE_LEN];
        (
            Header {
                master_key_id: master.id().to_owned(),
                created_at: "2026-01-01T00:00:00Z".into(),
                engine: "sqlite".into(),
                schema_version: 10,
                layout: copy::layout(),
                nonce: hex::encode(nonce),
            },
            nonce,
        )
    }

    fn read_back(master: &MasterKey, file: &[u8]) -> anyhow::Result<(Snapshot, Vec<String>)> {
        let (header, body) = parse_header(file)?;
        let plaintext = open(master, &file[..file.len() - body.len()], &header, body)?;
        decode(&plaintext)
    }

    #[test]
    fn a_backup_reads_back_as_it_was_written_with_the_same_master_key_only() {
        let (master, _) = MasterKey::generate();
        let (h, nonce) = header(&master);
        let (snapshot, kids) = sample();
        let file = seal(&master, &h, nonce, &encode(&snapshot, &kids));
        assert!(file.starts_with(b"KEYHOSTBACKUP1\n{\"masterKeyId\":"));
        assert!(
            !file.windows(5).any(|w| w == b"kid-1"),
            "the payload is encrypted"
        );
        assert_eq!(read_back(&master, &file).unwrap(), (snapshot, kids));
        let (other, _) = MasterKey::generate();
        assert!(read_back(&other, &file).is_err());
    }

    #[test]
    fn any_changed_byte_header_included_fails_authentication() {
        let (master, _) = MasterKey::generate();
        let (h, nonce) = header(&master);
        let (snapshot, kids) = sample();
        let file = seal(&master, &h, nonce, &encode(&snapshot, &kids));
        // Every byte of the header but the magic line, and every byte of the ciphertext.
        for i in MAGIC.len()..file.len() {
            let mut changed = file.clone();
            changed[i] ^= 0x01;
            assert!(read_back(&master, &changed).is_err(), "byte {i} changed");
        }
        assert!(read_back(&master, &file[..file.len() - 1]).is_err());
    }

    #[test]
    fn a_payload_with_trailing_or_missing_bytes_is_refused() {
        let (snapshot, kids) = sample();
        let mut payload = encode(&snapshot, &kids).to_vec();
        payload.push(0);
        assert!(decode(&payload).is_err());
        payload.truncate(payload.len() - 2);
        assert!(decode(&payload).is_err());
    }

    #[test]
    fn the_backup_key_is_bound_to_the_master_key_and_apart_from_row_macs() {
        let a = MasterKey::from_bytes(&[1; 32]);
        let b = MasterKey::from_bytes(&[2; 32]);
        let derived = |m: &MasterKey| Sealer::mac(&**m.row_auth(), KEY_DOMAIN, &[]);
        assert_eq!(derived(&a), derived(&MasterKey::from_bytes(&[1; 32])));
        assert_ne!(derived(&a), derived(&b));
        assert_ne!(derived(&a), Sealer::mac(&**a.row_auth(), "setting", &[]));
    }
}
