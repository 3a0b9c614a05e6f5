//! Generated gRPC types for `lockstep.v1`, with serde derives (`build.rs`):
//! `--json` prints these types, so every field is there and reads back.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("lockstep.v1");

/// Encoded descriptors, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lockstep_descriptor");

/// The human names of the protocol's enums, one definition for the text
/// output and the JSON (`#[serde(with = ...)]` on the enum-typed fields,
/// which prost keeps as `i32`): "hot", "drain", "alice"; unspecified is
/// `null` in JSON and "-" in text; an unknown number stays a number.
pub mod names {
    macro_rules! enum_names {
        ($module:ident, $ty:ident, [$($variant:ident => $name:literal),* $(,)?]) => {
            pub mod $module {
                use super::super::$ty as E;
                use serde::{de::Error as _, Deserialize as _};

                /// The name of `v`; `None` for unspecified or unknown.
                pub fn name(v: i32) -> Option<&'static str> {
                    match E::try_from(v) {
                        $(Ok(E::$variant) => Some($name),)*
                        _ => None,
                    }
                }

                /// The value named `name` (also accepts the proto name).
                pub fn parse(name: &str) -> Option<i32> {
                    match name {
                        $($name => Some(E::$variant as i32),)*
                        other => E::from_str_name(other).map(|e| e as i32),
                    }
                }

                pub fn serialize<S: serde::Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match (name(*v), *v) {
                        (Some(n), _) => s.serialize_str(n),
                        (None, 0) => s.serialize_none(),
                        (None, n) => s.serialize_i32(n),
                    }
                }

                pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                    #[derive(serde::Deserialize)]
                    #[serde(untagged)]
                    enum Raw {
                        Name(String),
                        Number(i32),
                    }
                    match Option::<Raw>::deserialize(d)? {
                        None => Ok(0),
                        Some(Raw::Number(n)) => Ok(n),
                        Some(Raw::Name(n)) => parse(&n).ok_or_else(|| {
                            D::Error::custom(format!(
                                "unknown {} {n:?}; expected one of: {}",
                                stringify!($module),
                                [$($name),*].join(", ")
                            ))
                        }),
                    }
                }
            }
        };
    }

    enum_names!(setup, Setup, [Hot => "hot", Warm => "warm"]);
    enum_names!(phase, Phase, [Hold => "hold", Drain => "drain", Serve => "serve"]);
    enum_names!(role, Role, [Alice => "alice", Bob => "bob"]);
}
