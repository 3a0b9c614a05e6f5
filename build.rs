/// Enum-typed fields (prost keeps them as `i32`) and the serde module in
/// `src/proto.rs` that writes them as names ("hot", "drain", "alice").
const ENUM_FIELDS: &[(&str, &str)] = &[
    ("Route.phase", "phase"),
    ("Route.setup", "setup"),
    ("Route.handover_issuer", "role"),
    ("Route.handover_from", "setup"),
    ("PendingRequest.to", "setup"),
    ("SetupHealth.setup", "setup"),
    ("SwitchRequest.to", "setup"),
    ("SwitchReply.from", "setup"),
    ("HistoryRecord.from", "setup"),
    ("HistoryRecord.to", "setup"),
    ("Applied.phase", "phase"),
    ("Applied.setup", "setup"),
    ("MemberState.role", "role"),
    ("DrainRequest.setup", "setup"),
    ("ServeRequest.setup", "setup"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // `--json` prints the generated types themselves (serde derives on
    // them), so every field is there and reads back.
    let mut config = tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("lockstep_descriptor.bin"))
        .message_attribute(
            ".lockstep.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    for (field, module) in ENUM_FIELDS {
        config = config.field_attribute(
            format!(".lockstep.v1.{field}"),
            format!("#[serde(with = \"crate::proto::names::{module}\")]"),
        );
    }
    config.compile_protos(
        &[
            "proto/lockstep/v1/types.proto",
            "proto/lockstep/v1/peer.proto",
            "proto/lockstep/v1/admin.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
