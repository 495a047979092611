//! Sensor readings: validation and their canonical stored form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest reading id in bytes.
pub const READING_ID_BYTES_MAX: usize = 128;
/// Most fields in one reading.
pub const READING_FIELDS_MAX: usize = 64;
/// Longest field name in bytes.
pub const FIELD_NAME_BYTES_MAX: usize = 64;
/// Longest string field value in bytes.
pub const FIELD_STRING_BYTES_MAX: usize = 1024;
/// Largest encoded reading. Bounds one map value in the document and keeps a full batch of
/// readings well inside one change.
pub const READING_BYTES_MAX: usize = 8 * 1024;

/// One field value: a JSON number, string or bool.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// Bool.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// Any other finite number.
    Float(f64),
    /// Text.
    Str(String),
}

/// Decoded by the value's own type (what an untagged derive would pick, trying `Bool`, `Int`,
/// `Float`, `Str` in turn, without buffering the value and formatting an error per variant
/// tried: every received reading is decoded).
impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FieldValue, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FieldValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, a string or a bool")
            }
            fn visit_bool<E>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<FieldValue, E> {
                Ok(i64::try_from(v).map_or(FieldValue::Float(v as f64), FieldValue::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<FieldValue, E> {
                Ok(FieldValue::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue::Str(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A sensor reading, keyed by `id` within its document.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// Unique id: the same id ingested twice, or at two nodes, is one reading.
    pub id: String,
    /// Wall-clock time of the measurement, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Flat fields.
    pub fields: BTreeMap<String, FieldValue>,
}

/// The body stored under the reading's id: canonical JSON, identical bytes on every node.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    ts: i64,
    fields: BTreeMap<String, FieldValue>,
}

/// [`Body`] with its fields borrowed: what encoding serializes (no copy of the fields).
#[derive(Serialize)]
struct BodyRef<'a> {
    ts: i64,
    fields: &'a BTreeMap<String, FieldValue>,
}

/// The length of `body`'s JSON, counted without building it.
fn encoded_len(body: &BodyRef<'_>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A BTreeMap of finite scalars always serializes (validate checked them first).
    serde_json::to_writer(&mut count, body).expect("finite flat reading serializes");
    count.0
}

/// Why a reading was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ReadingError {
    /// Empty id.
    #[error("reading id is empty")]
    IdEmpty,
    /// Id too long.
    #[error("reading id is {len} bytes, more than the limit of {max}")]
    IdTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Id with a character outside `A-Z a-z 0-9 . _ : -`.
    #[error("reading id contains {found:?}; allowed are A-Z a-z 0-9 . _ : -")]
    IdChar {
        /// The character.
        found: char,
    },
    /// Timestamp below zero.
    #[error("reading timestamp {ts_ms} is negative")]
    NegativeTimestamp {
        /// The timestamp.
        ts_ms: i64,
    },
    /// Too many fields.
    #[error("reading has {count} fields, more than the limit of {max}")]
    TooManyFields {
        /// Fields given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field name that is empty, too long or has a control character.
    #[error("field name {name:?} is empty, longer than {max} bytes or has control characters")]
    BadFieldName {
        /// The name (truncated).
        name: String,
        /// The length limit.
        max: usize,
    },
    /// NaN or an infinity.
    #[error("field {field:?} is not a finite number")]
    NonFinite {
        /// The field.
        field: String,
    },
    /// A string value that is too long.
    #[error("field {field:?} is {len} bytes, more than the limit of {max}")]
    StringTooLong {
        /// The field.
        field: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An object, array or null value.
    #[error("field {field:?} must be a number, string or bool, not {found}")]
    NotScalar {
        /// The field.
        field: String,
        /// What was found.
        found: &'static str,
    },
    /// `fields` is not a JSON object.
    #[error("reading fields must be a JSON object")]
    FieldsNotObject,
    /// The whole reading encodes larger than [`READING_BYTES_MAX`].
    #[error("reading encodes to {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A stored body that does not parse (only for data from a peer or disk).
    #[error("stored reading does not parse: {0}")]
    Malformed(String),
}

fn truncate(s: &str) -> String {
    s.chars().take(FIELD_NAME_BYTES_MAX).collect()
}

/// Validates a reading id.
pub fn validate_reading_id(id: &str) -> Result<(), ReadingError> {
    if id.is_empty() {
        return Err(ReadingError::IdEmpty);
    }
    if id.len() > READING_ID_BYTES_MAX {
        return Err(ReadingError::IdTooLong {
            len: id.len(),
            max: READING_ID_BYTES_MAX,
        });
    }
    if let Some(found) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(ReadingError::IdChar { found });
    }
    Ok(())
}

impl Reading {
    /// Builds a reading from JSON fields, refusing anything not flat, finite and bounded.
    pub fn from_json(
        id: impl Into<String>,
        ts_ms: i64,
        fields: &serde_json::Value,
    ) -> Result<Reading, ReadingError> {
        let object = fields.as_object().ok_or(ReadingError::FieldsNotObject)?;
        if object.len() > READING_FIELDS_MAX {
            return Err(ReadingError::TooManyFields {
                count: object.len(),
                max: READING_FIELDS_MAX,
            });
        }
        let mut out = BTreeMap::new();
        for (name, value) in object {
            let v = match value {
                serde_json::Value::Bool(b) => FieldValue::Bool(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => FieldValue::Int(i),
                    None => FieldValue::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::String(s) => FieldValue::Str(s.clone()),
                serde_json::Value::Null => {
                    return Err(ReadingError::NotScalar {
                        field: truncate(name),
                        found: "null",
                    })
                }
                serde_json::Value::Array(_) => {
                    return Err(ReadingError::NotScalar {
                        field: truncate(name),
                        found: "an array",
                    })
                }
                serde_json::Value::Object(_) => {
                    return Err(ReadingError::NotScalar {
                        field: truncate(name),
                        found: "an object",
                    })
                }
            };
            out.insert(name.clone(), v);
        }
        let reading = Reading {
            id: id.into(),
            ts_ms,
            fields: out,
        };
        reading.validate()?;
        Ok(reading)
    }

    /// Checks every bound; [`Reading::encode`] relies on it.
    pub fn validate(&self) -> Result<(), ReadingError> {
        validate_reading_id(&self.id)?;
        if self.ts_ms < 0 {
            return Err(ReadingError::NegativeTimestamp { ts_ms: self.ts_ms });
        }
        if self.fields.len() > READING_FIELDS_MAX {
            return Err(ReadingError::TooManyFields {
                count: self.fields.len(),
                max: READING_FIELDS_MAX,
            });
        }
        for (name, value) in &self.fields {
            if name.is_empty()
                || name.len() > FIELD_NAME_BYTES_MAX
                || name.chars().any(char::is_control)
            {
                return Err(ReadingError::BadFieldName {
                    name: truncate(name),
                    max: FIELD_NAME_BYTES_MAX,
                });
            }
            match value {
                FieldValue::Float(f) if !f.is_finite() => {
                    return Err(ReadingError::NonFinite {
                        field: truncate(name),
                    })
                }
                FieldValue::Str(s) if s.len() > FIELD_STRING_BYTES_MAX => {
                    return Err(ReadingError::StringTooLong {
                        field: truncate(name),
                        len: s.len(),
                        max: FIELD_STRING_BYTES_MAX,
                    })
                }
                _ => {}
            }
        }
        let len = encoded_len(&self.body());
        if len > READING_BYTES_MAX {
            return Err(ReadingError::TooLarge {
                len,
                max: READING_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// The body to serialize, borrowing the fields (serialized exactly as [`Body`] is).
    fn body(&self) -> BodyRef<'_> {
        BodyRef {
            ts: self.ts_ms,
            fields: &self.fields,
        }
    }

    /// The canonical body stored under the id: `{"ts":MS,"fields":{...}}` with sorted keys.
    pub fn encode(&self) -> String {
        // A BTreeMap of finite scalars always serializes.
        serde_json::to_string(&self.body()).expect("finite flat reading serializes")
    }

    /// Parses a stored body; the body came from a peer, so it is validated like new input.
    pub fn decode(id: &str, body: &str) -> Result<Reading, ReadingError> {
        if body.len() > READING_BYTES_MAX {
            return Err(ReadingError::TooLarge {
                len: body.len(),
                max: READING_BYTES_MAX,
            });
        }
        let parsed: Body =
            serde_json::from_str(body).map_err(|e| ReadingError::Malformed(e.to_string()))?;
        let reading = Reading {
            id: id.to_string(),
            ts_ms: parsed.ts,
            fields: parsed.fields,
        };
        reading.validate()?;
        Ok(reading)
    }

    /// The fields as a JSON object.
    pub fn fields_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.fields).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Flat finite fields are accepted and round-trip through the canonical body.
    #[test]
    fn round_trip() {
        let r = Reading::from_json(
            "r-1",
            1_700_000_000_000,
            &json!({"temp": 22.4, "n": 3, "ok": true, "s": "x"}),
        )
        .unwrap();
        let body = r.encode();
        assert_eq!(
            body,
            r#"{"ts":1700000000000,"fields":{"n":3,"ok":true,"s":"x","temp":22.4}}"#
        );
        assert_eq!(Reading::decode("r-1", &body).unwrap(), r);
    }

    // Nested values, nulls, bad ids, oversized and negative inputs get typed errors.
    #[test]
    fn rejects_bad_input() {
        let f = |v| Reading::from_json("r", 0, &v);
        assert!(matches!(
            f(json!({"a": {"b": 1}})),
            Err(ReadingError::NotScalar { .. })
        ));
        assert!(matches!(
            f(json!({"a": [1]})),
            Err(ReadingError::NotScalar { .. })
        ));
        assert!(matches!(
            f(json!({"a": null})),
            Err(ReadingError::NotScalar { .. })
        ));
        assert!(matches!(f(json!([1])), Err(ReadingError::FieldsNotObject)));
        assert!(matches!(
            f(json!({"": 1})),
            Err(ReadingError::BadFieldName { .. })
        ));
        assert!(matches!(
            f(json!({"s": "x".repeat(FIELD_STRING_BYTES_MAX + 1)})),
            Err(ReadingError::StringTooLong { .. })
        ));
        let many: serde_json::Map<_, _> = (0..=READING_FIELDS_MAX)
            .map(|i| (format!("f{i}"), json!(1)))
            .collect();
        assert!(matches!(
            f(serde_json::Value::Object(many)),
            Err(ReadingError::TooManyFields { .. })
        ));
        let big: serde_json::Map<_, _> = (0..10)
            .map(|i| (format!("f{i}"), json!("y".repeat(FIELD_STRING_BYTES_MAX))))
            .collect();
        assert!(matches!(
            f(serde_json::Value::Object(big)),
            Err(ReadingError::TooLarge { .. })
        ));
        assert!(matches!(
            Reading::from_json("", 0, &json!({})),
            Err(ReadingError::IdEmpty)
        ));
        assert!(matches!(
            Reading::from_json("a b", 0, &json!({})),
            Err(ReadingError::IdChar { .. })
        ));
        assert!(matches!(
            Reading::from_json("r", -1, &json!({})),
            Err(ReadingError::NegativeTimestamp { .. })
        ));
    }

    // NaN and infinities cannot enter through the typed API either.
    #[test]
    fn rejects_non_finite() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let r = Reading {
                id: "r".into(),
                ts_ms: 0,
                fields: [("x".to_string(), FieldValue::Float(x))]
                    .into_iter()
                    .collect(),
            };
            assert!(matches!(r.validate(), Err(ReadingError::NonFinite { .. })));
        }
    }

    // Decoding a field value by its type picks what the untagged derive picked, for every
    // kind of JSON value.
    #[test]
    fn field_values_decode_as_the_untagged_derive_would() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            Bool(bool),
            Int(i64),
            Float(f64),
            Str(String),
        }
        let derived = |text: &str| {
            serde_json::from_str::<Untagged>(text).map(|v| match v {
                Untagged::Bool(b) => FieldValue::Bool(b),
                Untagged::Int(i) => FieldValue::Int(i),
                Untagged::Float(f) => FieldValue::Float(f),
                Untagged::Str(s) => FieldValue::Str(s),
            })
        };
        let check = |text: &str| {
            let ours = serde_json::from_str::<FieldValue>(text);
            match (ours, derived(text)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text}: {a:?} against the derive's {:?}", b.ok()),
            }
        };
        for text in [
            "true",
            "false",
            "0",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "1e400",
            "1.5",
            "-0.0",
            "1.0",
            "2e3",
            r#""""#,
            r#""x""#,
            r#""a\"b\u00e9""#,
            "null",
            "[]",
            "[1]",
            "{}",
            r#"{"a":1}"#,
        ] {
            check(text);
        }
        proptest::proptest!(|(i in proptest::num::i64::ANY, u in proptest::num::u64::ANY,
                              f in proptest::num::f64::NORMAL, s in ".{0,12}")| {
            check(&i.to_string());
            check(&u.to_string());
            check(&serde_json::to_string(&f).unwrap());
            check(&serde_json::to_string(&s).unwrap());
        });
    }

    // The size limit counts the canonical body's bytes exactly: a body of the limit passes,
    // one byte more is refused with its length.
    #[test]
    fn the_size_limit_is_the_encoded_bodys_length() {
        let mk = |k: usize| Reading {
            id: "r".into(),
            ts_ms: 0,
            fields: (0..8)
                .map(|i| (format!("f{i}"), FieldValue::Str("y".repeat(1000))))
                .chain([("f8".to_string(), FieldValue::Str("z".repeat(k)))])
                .collect(),
        };
        let k = READING_BYTES_MAX - mk(0).encode().len();
        assert_eq!(mk(k).encode().len(), READING_BYTES_MAX);
        assert_eq!(encoded_len(&mk(k).body()), READING_BYTES_MAX);
        assert_eq!(mk(k).validate(), Ok(()));
        assert_eq!(
            mk(k + 1).validate(),
            Err(ReadingError::TooLarge {
                len: READING_BYTES_MAX + 1,
                max: READING_BYTES_MAX
            })
        );
    }

    // A body from a peer with extra keys or the wrong shape is refused, not half-read.
    #[test]
    fn decode_rejects_malformed() {
        assert!(Reading::decode("r", "{").is_err());
        assert!(Reading::decode("r", r#"{"ts":1,"fields":{},"x":1}"#).is_err());
        assert!(Reading::decode("r", r#"{"ts":1,"fields":{"a":{"b":1}}}"#).is_err());
        assert!(Reading::decode("r", r#"{"ts":-1,"fields":{}}"#).is_err());
    }
}
