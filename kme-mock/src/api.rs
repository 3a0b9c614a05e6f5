//! The ETSI GS QKD 014 API of the mock KME, without I/O: key derivation,
//! routing, request parsing and validation, response and error bodies.
//!
//! Two KMEs of one setup share keys without talking to each other: every
//! `key_ID` carries a random nonce, the key size and a MAC under the setup's
//! secret, and the key is derived from the secret and the `key_ID`. Bob checks
//! the MAC, so a `key_ID` issued by the other setup is an unknown key to him.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use lockstep_core::{Role, Setup};

type HmacSha256 = Hmac<Sha256>;

pub const DEFAULT_MASTER_SAE_ID: &str = "SAE_A";
pub const DEFAULT_SLAVE_SAE_ID: &str = "SAE_B";
/// Largest key the `key_ID` layout can describe (size is stored in bytes as a u16).
pub const MAX_REPRESENTABLE_KEY_SIZE: u32 = u16::MAX as u32 * 8;
/// The ETSI "key not found" message; the key-pair traffic keys on it.
pub const KEY_NOT_FOUND: &str = "key not found";
/// Optional request header naming the calling SAE. A real KME learns the
/// caller from its TLS client certificate; plain-HTTP callers may send this.
pub const CALLER_SAE_HEADER: &str = "x-sae-id";

const ID_LABEL: &[u8] = b"lockstep-kme-mock/key_ID";
const KEY_LABEL: &[u8] = b"lockstep-kme-mock/key";

/// Everything one KME (one setup, one role) needs to answer the API.
#[derive(Clone, Debug)]
pub struct KmeConfig {
    pub setup: Setup,
    pub role: Role,
    /// Shared by the Alice and Bob KMEs of one setup; different per setup.
    pub secret: String,
    /// This KME's id.
    pub kme_id: String,
    /// The id of the other KME of the same setup.
    pub peer_kme_id: String,
    pub master_sae_id: String,
    pub slave_sae_id: String,
    /// Default key size in bits.
    pub key_size: u32,
    pub min_key_size: u32,
    pub max_key_size: u32,
    pub max_key_per_request: u32,
    /// Reported as both `max_key_count` and `stored_key_count`: keys are
    /// derived on demand, so the store never runs dry.
    pub max_key_count: u32,
}

impl KmeConfig {
    /// A config with the default SAE ids, KME ids and limits.
    pub fn new(setup: Setup, role: Role, secret: impl Into<String>) -> KmeConfig {
        KmeConfig {
            setup,
            role,
            secret: secret.into(),
            kme_id: default_kme_id(setup, role),
            peer_kme_id: default_kme_id(setup, other_role(role)),
            master_sae_id: DEFAULT_MASTER_SAE_ID.to_string(),
            slave_sae_id: DEFAULT_SLAVE_SAE_ID.to_string(),
            key_size: 256,
            min_key_size: 64,
            max_key_size: 8192,
            max_key_per_request: 128,
            max_key_count: 100_000,
        }
    }

    /// Checks the limits are consistent and representable.
    pub fn validate(&self) -> Result<(), String> {
        if self.secret.is_empty() {
            return Err("the secret must not be empty".into());
        }
        for (name, v) in [
            ("kme id", &self.kme_id),
            ("peer kme id", &self.peer_kme_id),
            ("master SAE id", &self.master_sae_id),
            ("slave SAE id", &self.slave_sae_id),
        ] {
            if v.is_empty() {
                return Err(format!("the {name} must not be empty"));
            }
        }
        for (name, v) in [
            ("key size", self.key_size),
            ("min key size", self.min_key_size),
            ("max key size", self.max_key_size),
        ] {
            if v == 0 || !v.is_multiple_of(8) {
                return Err(format!("{name} {v} must be a positive multiple of 8"));
            }
        }
        if self.max_key_size > MAX_REPRESENTABLE_KEY_SIZE {
            return Err(format!(
                "max key size {} exceeds {MAX_REPRESENTABLE_KEY_SIZE} bits",
                self.max_key_size
            ));
        }
        if !(self.min_key_size <= self.key_size && self.key_size <= self.max_key_size) {
            return Err(format!(
                "key size {} must lie within [{}, {}]",
                self.key_size, self.min_key_size, self.max_key_size
            ));
        }
        if self.max_key_per_request == 0 {
            return Err("max keys per request must be at least 1".into());
        }
        Ok(())
    }

    /// ETSI `source_KME_ID` (Alice's KME) and `target_KME_ID` (Bob's).
    fn source_and_target(&self) -> (&str, &str) {
        match self.role {
            Role::Alice => (&self.kme_id, &self.peer_kme_id),
            Role::Bob => (&self.peer_kme_id, &self.kme_id),
        }
    }

    /// The SAE id the API path must name: the peer SAE of this KME's SAE.
    fn path_sae_id(&self) -> &str {
        match self.role {
            Role::Alice => &self.slave_sae_id,
            Role::Bob => &self.master_sae_id,
        }
    }

    /// The SAE that may call this KME.
    fn caller_sae_id(&self) -> &str {
        match self.role {
            Role::Alice => &self.master_sae_id,
            Role::Bob => &self.slave_sae_id,
        }
    }
}

/// `kme-hot-alice` etc.
pub fn default_kme_id(setup: Setup, role: Role) -> String {
    format!("kme-{setup}-{role}")
}

pub fn other_role(role: Role) -> Role {
    match role {
        Role::Alice => Role::Bob,
        Role::Bob => Role::Alice,
    }
}

// ---------------------------------------------------------------------------
// Key derivation

/// Issues and recognises the keys of one setup.
///
/// `key_ID` layout (16 bytes, shown as a version-4 UUID):
/// `nonce[0..8]` (version nibble forced) ‖ `mac[0..6]` (variant bits forced)
/// ‖ `size_in_bytes` (u16, big endian), where
/// `mac = HMAC-SHA256(secret, ID_LABEL ‖ nonce ‖ size)`. The size travels in
/// the id because `dec_keys` does not carry it.
#[derive(Clone)]
pub struct KeyDeriver {
    mac: HmacSha256,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdError {
    #[error("not a UUID")]
    Malformed,
    #[error("not issued by this setup's KME (MAC mismatch)")]
    Foreign,
}

impl KeyDeriver {
    pub fn new(secret: &[u8]) -> KeyDeriver {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = match HmacSha256::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        KeyDeriver { mac }
    }

    /// A fresh `key_ID` for a key of `size_bits` (a multiple of 8, at most
    /// [`MAX_REPRESENTABLE_KEY_SIZE`]; the caller validated it).
    pub fn new_key_id(&self, size_bits: u32) -> Uuid {
        self.key_id_from_nonce(rand::random(), size_bits)
    }

    /// Deterministic part of [`Self::new_key_id`], for tests.
    pub fn key_id_from_nonce(&self, mut nonce: [u8; 8], size_bits: u32) -> Uuid {
        nonce[6] = (nonce[6] & 0x0f) | 0x40;
        let size = u16::try_from(size_bits / 8)
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&nonce);
        b[8..14].copy_from_slice(&self.id_mac(&nonce, size));
        b[14..16].copy_from_slice(&size);
        Uuid::from_bytes(b)
    }

    /// Checks that `key_id` was issued under this secret; returns the id and
    /// the key size in bits.
    pub fn verify(&self, key_id: &str) -> Result<(Uuid, u32), KeyIdError> {
        let id = Uuid::parse_str(key_id.trim()).map_err(|_| KeyIdError::Malformed)?;
        let b = id.as_bytes();
        let nonce: [u8; 8] = b[0..8].try_into().map_err(|_| KeyIdError::Malformed)?;
        let size = [b[14], b[15]];
        if self.id_mac(&nonce, size) != b[8..14] {
            return Err(KeyIdError::Foreign);
        }
        let size_bits = u32::from(u16::from_be_bytes(size)) * 8;
        if size_bits == 0 {
            return Err(KeyIdError::Foreign);
        }
        Ok((id, size_bits))
    }

    /// The key for `key_id`: HMAC-SHA256 in counter mode, truncated.
    pub fn key(&self, key_id: &Uuid, size_bits: u32) -> Vec<u8> {
        let len = (size_bits / 8) as usize;
        let mut out = Vec::with_capacity(len + 32);
        let mut counter: u32 = 0;
        while out.len() < len {
            let mut m = self.mac.clone();
            m.update(KEY_LABEL);
            m.update(key_id.as_bytes());
            m.update(&counter.to_be_bytes());
            out.extend_from_slice(&m.finalize().into_bytes());
            counter += 1;
        }
        out.truncate(len);
        out
    }

    fn id_mac(&self, nonce: &[u8; 8], size: [u8; 2]) -> [u8; 6] {
        let mut m = self.mac.clone();
        m.update(ID_LABEL);
        m.update(nonce);
        m.update(&size);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 6];
        out.copy_from_slice(&full[..6]);
        // RFC 4122 variant bits, so the id is a well-formed v4 UUID.
        out[0] = (out[0] & 0x3f) | 0x80;
        out
    }
}

// ---------------------------------------------------------------------------
// Wire types (ETSI field names)

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    #[serde(rename = "key_ID")]
    pub key_id: String,
    /// Base64 (standard alphabet, padded).
    pub key: String,
}

/// ETSI "Key container".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyContainer {
    pub keys: Vec<KeyEntry>,
}

/// ETSI "Error" object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default)]
    pub details: Vec<Value>,
}

/// ETSI "Status" object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusBody {
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: String,
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: String,
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: String,
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: String,
    pub key_size: u32,
    pub stored_key_count: u32,
    pub max_key_count: u32,
    pub max_key_per_request: u32,
    pub max_key_size: u32,
    pub min_key_size: u32,
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u32,
}

/// ETSI "Key request" (POST enc_keys). Extension fields are accepted and
/// ignored unless mandatory.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct EncKeysRequest {
    pub number: Option<u32>,
    pub size: Option<u32>,
    #[serde(rename = "additional_slave_SAE_IDs", default)]
    pub additional_slave_sae_ids: Vec<String>,
    #[serde(default)]
    pub extension_mandatory: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct KeyIdEntry {
    #[serde(rename = "key_ID")]
    pub key_id: String,
}

/// ETSI "Key IDs" (POST dec_keys).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DecKeysRequest {
    #[serde(rename = "key_IDs")]
    pub key_ids: Vec<KeyIdEntry>,
}

/// An HTTP status with an ETSI error body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                message: message.into(),
                details: Vec::new(),
            },
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.body.details.push(detail);
        self
    }

    /// What every API call answers while the KME is in `unavailable` mode.
    pub fn unavailable() -> ApiError {
        ApiError::new(503, "KME unavailable")
            .with_detail(json!({"reason": "the key service is temporarily unavailable"}))
    }
}

// ---------------------------------------------------------------------------
// Routing and handling

/// One API request, as the I/O layer hands it over.
#[derive(Clone, Copy, Debug)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    /// Value of the [`CALLER_SAE_HEADER`] header, if sent.
    pub caller_sae_id: Option<&'a str>,
}

/// The answer to one API request, with what it did for the counters.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
    pub keys_issued: u64,
    pub keys_decoded: u64,
}

impl From<ApiError> for ApiResponse {
    fn from(e: ApiError) -> ApiResponse {
        ApiResponse {
            status: e.status,
            body: serde_json::to_value(&e.body)
                .unwrap_or_else(|_| json!({"message": e.body.message})),
            keys_issued: 0,
            keys_decoded: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Status,
    EncKeys,
    DecKeys,
}

/// Splits `/api/v1/keys/{SAE_ID}/{operation}`; the SAE id is percent-decoded.
pub fn parse_route(path: &str) -> Result<(String, Operation), ApiError> {
    let not_found = || ApiError::new(404, format!("no such resource: {path}"));
    let rest = path.strip_prefix("/api/v1/keys/").ok_or_else(not_found)?;
    let (sae, op) = rest.split_once('/').ok_or_else(not_found)?;
    let op = match op {
        "status" => Operation::Status,
        "enc_keys" => Operation::EncKeys,
        "dec_keys" => Operation::DecKeys,
        _ => return Err(not_found()),
    };
    let sae = percent_decode(sae)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("malformed SAE ID in path"))?;
    Ok((sae, op))
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`); `None` on
/// bad escapes or invalid UTF-8.
fn percent_decode_with(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn percent_decode(s: &str) -> Option<String> {
    percent_decode_with(s, false)
}

/// The value of `name` in a query string (the last one if repeated).
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_with(k, true)
            .ok_or_else(|| ApiError::bad_request("malformed query string"))?;
        if k == name {
            found = Some(
                percent_decode_with(v, true)
                    .ok_or_else(|| ApiError::bad_request("malformed query string"))?,
            );
        }
    }
    Ok(found)
}

fn parse_u32_param(query: Option<&str>, name: &str) -> Result<Option<u32>, ApiError> {
    query_param(query, name)?
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("parameter {name} must be a non-negative integer"))
                    .with_detail(json!({"parameter": name, "value": v}))
            })
        })
        .transpose()
}

fn parse_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("malformed request body")
            .with_detail(json!({"reason": e.to_string()}))
    })
}

/// One KME's API logic.
#[derive(Clone)]
pub struct Kme {
    config: KmeConfig,
    deriver: KeyDeriver,
}

impl Kme {
    pub fn new(config: KmeConfig) -> Result<Kme, String> {
        config.validate()?;
        let deriver = KeyDeriver::new(config.secret.as_bytes());
        Ok(Kme { config, deriver })
    }

    pub fn config(&self) -> &KmeConfig {
        &self.config
    }

    pub fn deriver(&self) -> &KeyDeriver {
        &self.deriver
    }

    /// Answers one request; never fails, errors become ETSI error bodies.
    pub fn handle(&self, req: ApiRequest<'_>) -> ApiResponse {
        self.handle_with(req, false)
    }

    /// [`Self::handle`], with `status` reporting `stored_key_count: 0` when
    /// `empty_store` (the `empty` fault mode); keys are still served.
    pub fn handle_with(&self, req: ApiRequest<'_>, empty_store: bool) -> ApiResponse {
        match self.try_handle(req, empty_store) {
            Ok(r) => r,
            Err(e) => e.into(),
        }
    }

    fn try_handle(&self, req: ApiRequest<'_>, empty_store: bool) -> Result<ApiResponse, ApiError> {
        let (sae, op) = parse_route(req.path)?;
        let method_ok = match op {
            Operation::Status => req.method == "GET",
            Operation::EncKeys | Operation::DecKeys => matches!(req.method, "GET" | "POST"),
        };
        if !method_ok {
            return Err(ApiError::new(
                405,
                format!("method {} not allowed on {}", req.method, req.path),
            ));
        }
        if let Some(caller) = req.caller_sae_id {
            if caller != self.config.caller_sae_id() {
                return Err(ApiError::new(
                    401,
                    format!("SAE {caller:?} is not authorised at this KME"),
                )
                .with_detail(json!({"expected_SAE_ID": self.config.caller_sae_id()})));
            }
        }
        match (op, self.config.role) {
            (Operation::EncKeys, Role::Bob) => {
                return Err(ApiError::bad_request(
                    "enc_keys is not served by this KME: it is the slave (Bob) side of the link; use dec_keys",
                ))
            }
            (Operation::DecKeys, Role::Alice) => {
                return Err(ApiError::bad_request(
                    "dec_keys is not served by this KME: it is the master (Alice) side of the link; use enc_keys",
                ))
            }
            _ => {}
        }
        if sae != self.config.path_sae_id() {
            return Err(ApiError::bad_request(format!("unknown SAE ID {sae:?}"))
                .with_detail(json!({"SAE_ID": sae, "reason": "not the peer SAE of this KME"})));
        }
        match op {
            Operation::Status => {
                let mut status = self.status();
                if empty_store {
                    status.stored_key_count = 0;
                }
                Ok(ok(json_value(&status)?))
            }
            Operation::EncKeys => {
                let request = if req.method == "GET" {
                    EncKeysRequest {
                        number: parse_u32_param(req.query, "number")?,
                        size: parse_u32_param(req.query, "size")?,
                        ..EncKeysRequest::default()
                    }
                } else if req.body.iter().all(u8::is_ascii_whitespace) {
                    // ETSI makes every field optional; accept an empty body too.
                    EncKeysRequest::default()
                } else {
                    parse_json(req.body)?
                };
                let keys = self.enc_keys(&request)?;
                let n = keys.keys.len() as u64;
                let mut r = ok(json_value(&keys)?);
                r.keys_issued = n;
                Ok(r)
            }
            Operation::DecKeys => {
                let ids: Vec<String> = if req.method == "GET" {
                    let id = query_param(req.query, "key_ID")?
                        .ok_or_else(|| ApiError::bad_request("parameter key_ID is required"))?;
                    vec![id]
                } else {
                    let r: DecKeysRequest = parse_json(req.body)?;
                    r.key_ids.into_iter().map(|e| e.key_id).collect()
                };
                let keys = self.dec_keys(&ids)?;
                let n = keys.keys.len() as u64;
                let mut r = ok(json_value(&keys)?);
                r.keys_decoded = n;
                Ok(r)
            }
        }
    }

    pub fn status(&self) -> StatusBody {
        let (source, target) = self.config.source_and_target();
        StatusBody {
            source_kme_id: source.to_string(),
            target_kme_id: target.to_string(),
            master_sae_id: self.config.master_sae_id.clone(),
            slave_sae_id: self.config.slave_sae_id.clone(),
            key_size: self.config.key_size,
            stored_key_count: self.config.max_key_count,
            max_key_count: self.config.max_key_count,
            max_key_per_request: self.config.max_key_per_request,
            max_key_size: self.config.max_key_size,
            min_key_size: self.config.min_key_size,
            max_sae_id_count: 0,
        }
    }

    /// Issues fresh keys after validating `number` and `size`.
    pub fn enc_keys(&self, req: &EncKeysRequest) -> Result<KeyContainer, ApiError> {
        let c = &self.config;
        let number = req.number.unwrap_or(1);
        let size = req.size.unwrap_or(c.key_size);
        if number == 0 || number > c.max_key_per_request {
            return Err(ApiError::bad_request(format!(
                "number {number} must lie within [1, {}]",
                c.max_key_per_request
            ))
            .with_detail(
                json!({"parameter": "number", "max_key_per_request": c.max_key_per_request}),
            ));
        }
        if !size.is_multiple_of(8) || size < c.min_key_size || size > c.max_key_size {
            return Err(ApiError::bad_request(format!(
                "size {size} must be a multiple of 8 within [{}, {}]",
                c.min_key_size, c.max_key_size
            ))
            .with_detail(json!({"parameter": "size", "min_key_size": c.min_key_size, "max_key_size": c.max_key_size})));
        }
        if !req.additional_slave_sae_ids.is_empty() {
            return Err(
                ApiError::bad_request("additional_slave_SAE_IDs are not supported")
                    .with_detail(json!({"max_SAE_ID_count": 0})),
            );
        }
        if !req.extension_mandatory.is_empty() {
            return Err(ApiError::bad_request(
                "not all extension_mandatory parameters are supported",
            )
            .with_detail(json!({"extension_mandatory": req.extension_mandatory})));
        }
        let keys = (0..number)
            .map(|_| {
                let id = self.deriver.new_key_id(size);
                KeyEntry {
                    key_id: id.to_string(),
                    key: base64::engine::general_purpose::STANDARD
                        .encode(self.deriver.key(&id, size)),
                }
            })
            .collect();
        Ok(KeyContainer { keys })
    }

    /// Returns the keys for `ids`; any unknown id fails the whole request.
    pub fn dec_keys(&self, ids: &[String]) -> Result<KeyContainer, ApiError> {
        let max = self.config.max_key_per_request;
        if ids.is_empty() {
            return Err(ApiError::bad_request("key_IDs must not be empty"));
        }
        if ids.len() > max as usize {
            return Err(ApiError::bad_request(format!(
                "{} key_IDs exceed max_key_per_request {max}",
                ids.len()
            )));
        }
        let mut keys = Vec::with_capacity(ids.len());
        let mut unknown = Vec::new();
        for id in ids {
            match self.deriver.verify(id) {
                Ok((uuid, size)) => keys.push(KeyEntry {
                    key_id: id.clone(),
                    key: base64::engine::general_purpose::STANDARD
                        .encode(self.deriver.key(&uuid, size)),
                }),
                Err(e) => unknown.push(json!({"key_ID": id, "reason": e.to_string()})),
            }
        }
        if !unknown.is_empty() {
            let mut err = ApiError::bad_request(KEY_NOT_FOUND);
            err.body.details = unknown;
            return Err(err);
        }
        Ok(KeyContainer { keys })
    }
}

fn ok(body: Value) -> ApiResponse {
    ApiResponse {
        status: 200,
        body,
        keys_issued: 0,
        keys_decoded: 0,
    }
}

fn json_value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::new(500, format!("encoding the response: {e}")))
}

// ---------------------------------------------------------------------------
// Fault injection (the /mock/ control API)

/// How the ETSI API misbehaves, set through `POST /mock/fault`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// Answer normally.
    #[default]
    Ok,
    /// Dead KME: the API listener is closed (connections are refused) and
    /// every open API connection is closed at once, in-flight requests
    /// unanswered.
    Down,
    /// Every API call answers 503 with an ETSI error body.
    Unavailable,
    /// Every API answer is delayed by `delay_ms`.
    Slow,
    /// `status` reports `stored_key_count: 0` (an exhausted key store);
    /// everything else answers normally.
    Empty,
}

impl std::fmt::Display for FaultMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultMode::Ok => "ok",
            FaultMode::Down => "down",
            FaultMode::Unavailable => "unavailable",
            FaultMode::Slow => "slow",
            FaultMode::Empty => "empty",
        })
    }
}

impl std::str::FromStr for FaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.trim().to_ascii_lowercase())).map_err(|_| {
            format!("unknown fault mode {s:?}: expected ok, down, unavailable, slow or empty")
        })
    }
}

/// How this KME misbehaves: the mode, and for `slow` the delay. The body
/// of `POST /mock/fault`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmeFault {
    pub mode: FaultMode,
    #[serde(default)]
    pub delay_ms: u64,
}

/// Parses a `POST /mock/fault` body.
pub fn parse_fault(body: &[u8]) -> Result<KmeFault, ApiError> {
    let fault: KmeFault = parse_json(body)?;
    if fault.mode == FaultMode::Slow && fault.delay_ms == 0 {
        return Err(ApiError::bad_request("mode slow needs delay_ms > 0"));
    }
    Ok(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kme(setup: Setup, role: Role, secret: &str) -> Kme {
        Kme::new(KmeConfig::new(setup, role, secret)).expect("valid config")
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        body: &'a [u8],
    ) -> ApiRequest<'a> {
        ApiRequest {
            method,
            path,
            query,
            body,
            caller_sae_id: None,
        }
    }

    fn error_of(r: &ApiResponse) -> ErrorBody {
        serde_json::from_value(r.body.clone()).expect("ETSI error body")
    }

    #[test]
    fn key_ids_are_v4_uuids_carrying_the_size() {
        let d = KeyDeriver::new(b"s");
        let id = d.key_id_from_nonce([0xff; 8], 256);
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(d.verify(&id.to_string()), Ok((id, 256)));
        assert_eq!(d.key(&id, 256).len(), 32);
        assert_eq!(d.key(&id, 8192).len(), 1024);
        // Expansion is prefix-consistent and deterministic.
        assert_eq!(d.key(&id, 8192)[..32], d.key(&id, 256)[..]);
        assert_ne!(d.new_key_id(256), d.new_key_id(256));
    }

    #[test]
    fn same_secret_bob_returns_alices_key() {
        let alice = kme(Setup::Hot, Role::Alice, "hot-secret");
        let bob = kme(Setup::Hot, Role::Bob, "hot-secret");
        let r = alice.handle(req(
            "POST",
            "/api/v1/keys/SAE_B/enc_keys",
            None,
            br#"{"number":3,"size":512}"#,
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.keys_issued, 3);
        let issued: KeyContainer = serde_json::from_value(r.body).expect("key container");
        assert_eq!(issued.keys.len(), 3);
        let body = json!({"key_IDs": issued.keys.iter().map(|k| json!({"key_ID": k.key_id})).collect::<Vec<_>>()});
        let body = body.to_string();
        let r = bob.handle(req(
            "POST",
            "/api/v1/keys/SAE_A/dec_keys",
            None,
            body.as_bytes(),
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.keys_decoded, 3);
        let got: KeyContainer = serde_json::from_value(r.body).expect("key container");
        assert_eq!(got, issued);
        // GET with a query works too.
        let q = format!("key_ID={}", issued.keys[0].key_id);
        let r = bob.handle(req("GET", "/api/v1/keys/SAE_A/dec_keys", Some(&q), b""));
        let got: KeyContainer = serde_json::from_value(r.body).expect("key container");
        assert_eq!(got.keys[0], issued.keys[0]);
        let key = base64::engine::general_purpose::STANDARD
            .decode(&got.keys[0].key)
            .expect("base64");
        assert_eq!(key.len(), 64);
    }

    #[test]
    fn other_setups_key_is_not_found() {
        let hot_alice = kme(Setup::Hot, Role::Alice, "hot-secret");
        let warm_bob = kme(Setup::Warm, Role::Bob, "warm-secret");
        let r = hot_alice.handle(req(
            "GET",
            "/api/v1/keys/SAE_B/enc_keys",
            Some("number=1"),
            b"",
        ));
        let issued: KeyContainer = serde_json::from_value(r.body).expect("key container");
        let id = &issued.keys[0].key_id;
        let q = format!("key_ID={id}");
        let r = warm_bob.handle(req("GET", "/api/v1/keys/SAE_A/dec_keys", Some(&q), b""));
        assert_eq!(r.status, 400);
        let e = error_of(&r);
        assert_eq!(e.message, KEY_NOT_FOUND);
        assert_eq!(e.details[0]["key_ID"], json!(id));
        assert!(e.details[0]["reason"].is_string());
        // A malformed id is an unknown key as well.
        let r = warm_bob.handle(req(
            "GET",
            "/api/v1/keys/SAE_A/dec_keys",
            Some("key_ID=nope"),
            b"",
        ));
        assert_eq!(
            (r.status, error_of(&r).message.as_str()),
            (400, KEY_NOT_FOUND)
        );
    }

    #[test]
    fn empty_store_reports_zero_keys_but_still_serves() {
        let k = kme(Setup::Hot, Role::Alice, "x");
        let r = k.handle_with(req("GET", "/api/v1/keys/SAE_B/status", None, b""), true);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["stored_key_count"], 0);
        let r = k.handle(req("GET", "/api/v1/keys/SAE_B/status", None, b""));
        assert_eq!(r.body["stored_key_count"], 100_000);
        let r = k.handle_with(req("GET", "/api/v1/keys/SAE_B/enc_keys", None, b""), true);
        assert_eq!(r.status, 200, "{}", r.body);
    }

    #[test]
    fn status_reports_configured_ids_on_both_roles() {
        for role in Role::ALL {
            let k = kme(Setup::Warm, role, "x");
            let path = match role {
                Role::Alice => "/api/v1/keys/SAE_B/status",
                Role::Bob => "/api/v1/keys/SAE_A/status",
            };
            let r = k.handle(req("GET", path, None, b""));
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["source_KME_ID"], "kme-warm-alice");
            assert_eq!(r.body["target_KME_ID"], "kme-warm-bob");
            assert_eq!(r.body["master_SAE_ID"], "SAE_A");
            assert_eq!(r.body["slave_SAE_ID"], "SAE_B");
            for field in [
                "key_size",
                "stored_key_count",
                "max_key_count",
                "max_key_per_request",
                "max_key_size",
                "min_key_size",
                "max_SAE_ID_count",
            ] {
                assert!(r.body[field].is_u64(), "{field} missing in {}", r.body);
            }
        }
    }

    #[test]
    fn invalid_input_is_400_with_etsi_body() {
        let alice = kme(Setup::Hot, Role::Alice, "s");
        let bob = kme(Setup::Hot, Role::Bob, "s");
        type Case<'a> = (&'a Kme, &'a str, &'a str, Option<&'a str>, &'a [u8]);
        let cases: Vec<Case> = vec![
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_B/enc_keys",
                Some("size=100"),
                b"",
            ),
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_B/enc_keys",
                Some("size=8"),
                b"",
            ),
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_B/enc_keys",
                Some("size=abc"),
                b"",
            ),
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_B/enc_keys",
                Some("number=0"),
                b"",
            ),
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_B/enc_keys",
                Some("number=129"),
                b"",
            ),
            (
                &alice,
                "POST",
                "/api/v1/keys/SAE_B/enc_keys",
                None,
                b"{\"number\":",
            ),
            (
                &alice,
                "POST",
                "/api/v1/keys/SAE_B/enc_keys",
                None,
                br#"{"number":"1"}"#,
            ),
            (
                &alice,
                "POST",
                "/api/v1/keys/SAE_B/enc_keys",
                None,
                br#"{"additional_slave_SAE_IDs":["X"]}"#,
            ),
            (
                &alice,
                "POST",
                "/api/v1/keys/SAE_B/enc_keys",
                None,
                br#"{"extension_mandatory":[{"x":1}]}"#,
            ),
            (&alice, "GET", "/api/v1/keys/WRONG/enc_keys", None, b""),
            (&alice, "GET", "/api/v1/keys/WRONG/status", None, b""),
            (
                &alice,
                "GET",
                "/api/v1/keys/SAE_A/dec_keys",
                Some("key_ID=x"),
                b"",
            ),
            (&bob, "GET", "/api/v1/keys/SAE_A/enc_keys", None, b""),
            (&bob, "GET", "/api/v1/keys/SAE_A/dec_keys", None, b""),
            (
                &bob,
                "POST",
                "/api/v1/keys/SAE_A/dec_keys",
                None,
                br#"{"key_IDs":[]}"#,
            ),
            (&bob, "POST", "/api/v1/keys/SAE_A/dec_keys", None, b"[]"),
            (
                &bob,
                "GET",
                "/api/v1/keys/SAE_B/dec_keys",
                Some("key_ID=x"),
                b"",
            ),
        ];
        for (k, method, path, query, body) in cases {
            let r = k.handle(req(method, path, query, body));
            assert_eq!(r.status, 400, "{method} {path}?{query:?}: {}", r.body);
            let e = error_of(&r);
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn defaults_empty_body_and_percent_encoding() {
        let alice = kme(Setup::Hot, Role::Alice, "s");
        let r = alice.handle(req("POST", "/api/v1/keys/SAE%5FB/enc_keys", None, b""));
        assert_eq!(r.status, 200, "{}", r.body);
        let k: KeyContainer = serde_json::from_value(r.body).expect("key container");
        assert_eq!(k.keys.len(), 1);
        let key = base64::engine::general_purpose::STANDARD
            .decode(&k.keys[0].key)
            .expect("base64");
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn routing_methods_and_caller_identity() {
        let alice = kme(Setup::Hot, Role::Alice, "s");
        assert_eq!(
            alice
                .handle(req("GET", "/api/v1/keys/SAE_B/other", None, b""))
                .status,
            404
        );
        assert_eq!(alice.handle(req("GET", "/nope", None, b"")).status, 404);
        assert_eq!(
            alice
                .handle(req("POST", "/api/v1/keys/SAE_B/status", None, b""))
                .status,
            405
        );
        let mut r = req("GET", "/api/v1/keys/SAE_B/status", None, b"");
        r.caller_sae_id = Some("SAE_B");
        let resp = alice.handle(r);
        assert_eq!(resp.status, 401);
        assert!(!error_of(&resp).message.is_empty());
        r.caller_sae_id = Some("SAE_A");
        assert_eq!(alice.handle(r).status, 200);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_param(Some("a=1&b=2&a=3"), "a"), Ok(Some("3".into())));
        assert_eq!(
            query_param(Some("a=x%2By+z"), "a"),
            Ok(Some("x+y z".into()))
        );
        assert_eq!(query_param(None, "a"), Ok(None));
        assert!(query_param(Some("a=%zz"), "a").is_err());
        assert_eq!(
            parse_route("/api/v1/keys/A%20B/status").map(|r| r.0),
            Ok("A B".into())
        );
    }

    #[test]
    fn config_validation() {
        let mut c = KmeConfig::new(Setup::Hot, Role::Alice, "s");
        assert!(c.validate().is_ok());
        c.key_size = 100;
        assert!(c.validate().is_err());
        c.key_size = 256;
        c.max_key_size = MAX_REPRESENTABLE_KEY_SIZE + 8;
        assert!(c.validate().is_err());
        let c = KmeConfig::new(Setup::Hot, Role::Alice, "");
        assert!(c.validate().is_err());
    }

    #[test]
    fn fault_parsing() {
        assert_eq!(
            parse_fault(br#"{"mode":"slow","delay_ms":250}"#),
            Ok(KmeFault {
                mode: FaultMode::Slow,
                delay_ms: 250
            })
        );
        assert_eq!(
            parse_fault(br#"{"mode":"down"}"#).map(|f| f.mode),
            Ok(FaultMode::Down)
        );
        assert!(parse_fault(br#"{"mode":"slow"}"#).is_err());
        assert!(parse_fault(br#"{"mode":"sideways"}"#).is_err());
        assert!(parse_fault(b"nope").is_err());
        assert_eq!(
            "Unavailable".parse::<FaultMode>(),
            Ok(FaultMode::Unavailable)
        );
        assert!("x".parse::<FaultMode>().is_err());
        assert_eq!("empty".parse::<FaultMode>(), Ok(FaultMode::Empty));
    }

    #[test]
    fn unavailable_error_body() {
        let r: ApiResponse = ApiError::unavailable().into();
        assert_eq!(r.status, 503);
        assert_eq!(r.body["message"], "KME unavailable");
        assert!(r.body["details"].is_array());
    }
}
