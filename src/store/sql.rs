//! The engine-neutral vocabulary of store operations: values, rows and the reading of a row
//! into a type. Every operation is written once against these, with placeholders `?1`, `?2`, …;
//! each engine binds [`Value`]s and hands back [`Row`]s of them.
//!
//! Both schemas store the same four kinds of value (integers, text, bytes, null), so a row reads
//! the same, and its integrity MAC checks the same, whichever engine holds it.

use std::fmt;

/// A value bound to a placeholder or read from a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT; booleans read as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// A column that cannot be read as the type asked for.
#[derive(Debug, Clone)]
pub struct ReadError {
    /// Column index.
    pub column: usize,
    /// What was wrong.
    pub why: String,
}

impl ReadError {
    /// A column whose value is of the right kind but cannot be understood.
    pub fn invalid(column: usize, why: impl fmt::Display) -> Self {
        Self {
            column,
            why: why.to_string(),
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.why)
    }
}

impl std::error::Error for ReadError {}

/// One row of a result.
#[derive(Debug, Clone)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` read as `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, ReadError> {
        let value = self.0.get(i).ok_or_else(|| ReadError {
            column: i,
            why: "no such column".to_owned(),
        })?;
        T::from_value(value).map_err(|why| ReadError { column: i, why })
    }

    /// Column `i` as it is stored.
    pub fn raw(&self, i: usize) -> Option<&Value> {
        self.0.get(i)
    }

    /// Column `i` parsed from text with [`std::str::FromStr`].
    pub fn parse<T>(&self, i: usize) -> Result<T, ReadError>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        let text: String = self.get(i)?;
        text.parse().map_err(|e| ReadError::invalid(i, e))
    }

    /// The row's key, column 0, as far as it can be read (for reporting an unreadable row).
    pub fn key(&self) -> String {
        match self.0.first() {
            Some(Value::Int(i)) => i.to_string(),
            Some(Value::Text(t)) => t.clone(),
            _ => "?".to_owned(),
        }
    }
}

/// A type a column can be read as.
pub trait FromValue: Sized {
    /// Reads `value`, or says why it cannot.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn wrong(value: &Value, want: &str) -> String {
    format!("{} where {want} belongs", value.kind())
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(i) => Ok(*i),
            other => Err(wrong(other, "an integer")),
        }
    }
}

macro_rules! narrow_integers {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: &Value) -> Result<Self, String> {
                let i = i64::from_value(value)?;
                <$t>::try_from(i).map_err(|_| format!("{i} is out of range"))
            }
        }
    )*};
}
narrow_integers!(u16, u32, i32, u64);

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(t) => Ok(t.clone()),
            other => Err(wrong(other, "text")),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(wrong(other, "bytes")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A type that can be bound to a placeholder.
pub trait ToValue {
    /// The value bound.
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}

impl ToValue for u32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for u16 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// The values bound to `?1`, `?2`, … of a statement, in order.
macro_rules! args {
    () => { [] as [$crate::store::sql::Value; 0] };
    ($($x:expr),+ $(,)?) => {
        [$($crate::store::sql::ToValue::to_value(&$x)),+]
    };
}
pub(crate) use args;

/// Rewrites `?N` placeholders as PostgreSQL's `$N` (the statements hold no `?` elsewhere: no
/// string literal in them contains one).
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?10)"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $10)"
        );
    }

    #[test]
    fn a_value_of_another_kind_is_an_error_not_a_conversion() {
        let row = Row(vec![Value::Text("7".into()), Value::Null, Value::Int(-1)]);
        assert!(row.get::<i64>(0).is_err());
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert!(row.get::<u32>(2).is_err());
        assert!(row.get::<String>(3).is_err());
        assert_eq!(row.key(), "7");
    }
}
