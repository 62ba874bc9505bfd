//! The README's claims that name a test must name one that exists.

#[test]
fn every_test_the_readme_names_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut named = 0;
    for piece in readme.split('`').skip(1).step_by(2) {
        // `file::test`, or `dir::file::test` for tests/api/dir/file.rs.
        let Some((module, test)) = piece.rsplit_once("::") else {
            continue;
        };
        let is_name = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !module.split("::").all(is_name) || !is_name(test) {
            continue;
        }
        let path = format!("{root}/tests/api/{}.rs", module.replace("::", "/"));
        let Ok(source) = std::fs::read_to_string(&path) else {
            continue;
        };
        assert!(
            source.contains(&format!("fn {test}(")),
            "README names {module}::{test}, which {path} does not define"
        );
        named += 1;
    }
    assert!(
        named >= 20,
        "the threat model names its tests ({named} found)"
    );
}
