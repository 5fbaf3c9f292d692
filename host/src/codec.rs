//! The one place that turns stored values into bytes and back.
//!
//! Every encoded value starts with a format-version byte, so the encoding (bincode
//! 2 today) can be replaced without rewriting the store: a reader sees which
//! format wrote a value and refuses one it does not know.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format of values written now: bincode 2, standard configuration.
pub const FORMAT_VERSION: u8 = 1;

/// Refuses to decode a value larger than this, whatever its header claims.
const MAX_DECODE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has format version {0}, this plughost reads version {FORMAT_VERSION}: upgrade plughost")]
    UnknownFormat(u8),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownFormat(version));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Entity, ExecutionContext, ParameterValue, Value};

    #[test]
    fn round_trips_the_model() {
        let mut ctx = ExecutionContext::default();
        ctx.input_parameters.insert(
            "Target".into(),
            ParameterValue::Entity(
                Entity::new("account").with("name", Value::Text("A".into())).with("n", Value::Money("1.5".into())),
            ),
        );
        let bytes = encode(&ctx).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<ExecutionContext>(&bytes).unwrap(), ctx);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let mut bytes = encode(&42u64).unwrap();
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        bytes[0] = 9;
        assert!(matches!(decode::<u64>(&bytes), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode::<String>(&[FORMAT_VERSION, 200, 1]), Err(CodecError::Corrupt(_))));
    }
}
