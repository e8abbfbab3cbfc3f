//! `f64` values in JSON, NaN and the infinities included. JSON numbers cannot be
//! those (`serde_json` would write `null` and could not read it back as a number), so
//! they are written as the strings `"NaN"`, `"inf"` and `"-inf"` and read back from
//! them; finite values are JSON numbers, read back to the same bits (`serde_json`'s
//! `float_roundtrip`). What the report writes (`protocol::Number`) and what statistics
//! written in one process and merged in another carry (`stats::ChannelMoments`).

use serde::de::{Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One value: a number when finite, else `"NaN"`, `"inf"` or `"-inf"`.
pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match v.is_finite() {
        true => s.serialize_f64(*v),
        false => s.serialize_str(&v.to_string()),
    }
}

/// One value as [`serialize`] wrote it (an integer is read as a float too).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct Float;
    impl Visitor<'_> for Float {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, or \"NaN\", \"inf\" or \"-inf\"")
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::invalid_value(Unexpected::Str(other), &self)),
            }
        }
    }
    d.deserialize_any(Float)
}

/// A value that serialises through [`serialize`] and [`deserialize`].
#[derive(Clone, Copy)]
struct Float(f64);

impl Serialize for Float {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Float {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Float)
    }
}

/// A sequence of values (`#[serde(with = "crate::floats::seq")]` on a `Vec<f64>`).
pub(crate) mod seq {
    use super::Float;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&x| Float(x)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let values = Vec::<Float>::deserialize(d)?;
        Ok(values.into_iter().map(|f| f.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Values {
        #[serde(with = "super")]
        one: f64,
        #[serde(with = "super::seq")]
        many: Vec<f64>,
    }

    #[test]
    fn every_value_comes_back_with_its_bits() {
        let many = vec![
            0.1,
            -0.0,
            1.0 / 3.0,
            f64::MIN_POSITIVE / 3.0,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2.0f64.powi(60) + 2048.0,
        ];
        let v = Values {
            one: 0.30000000000000004,
            many: many.clone(),
        };
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains(r#""NaN","inf","-inf""#), "{text}");
        let back: Values = serde_json::from_str(&text).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(back.one.to_bits(), v.one.to_bits());
        assert_eq!(bits(&back.many), bits(&many));
        let bad = serde_json::from_str::<Values>(r#"{"one":"nan","many":[]}"#);
        assert!(bad.unwrap_err().to_string().contains("\"NaN\", \"inf\""));
        let whole: Values = serde_json::from_str(r#"{"one":3,"many":[-2]}"#).unwrap();
        assert_eq!((whole.one, whole.many), (3.0, vec![-2.0]));
    }
}
