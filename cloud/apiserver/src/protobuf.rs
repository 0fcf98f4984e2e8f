//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into the
//! JSON kube-apiserver would have made of them, so the rest of the server sees one format.
//!
//! kubectl's typed clients send protobuf: `kubectl create namespace|configmap|secret|deployment|
//! service|serviceaccount`, and client-go programs by default. Responses stay JSON, which those
//! clients accept as well.
//!
//! The wire format carries field numbers, not names. `openapi/protobuf.json.gz` (made by
//! `scripts/update-protobuf` from the prost-generated `k8s-pb` crate, matched to our OpenAPI
//! definitions) maps each message's field numbers to JSON names and types. A body is the magic
//! `k8s\0` then a `runtime.Unknown` envelope: `typeMeta` (apiVersion, kind) and `raw`, the
//! object's own message, which the kind's definition names.
//!
//! Go's encoding/json decides what the JSON looks like, so the decoder follows it: bytes are
//! base64, `Time` is RFC 3339 (the zero time is omitted), `Quantity` and `IntOrString` are
//! scalars, raw-JSON holders are parsed, Go embedded structs (`Volume`'s `VolumeSource`) are
//! inlined. gogo-protobuf writes non-pointer fields even when empty, where Go's JSON would omit
//! them (`omitempty`), so empty strings in struct fields are dropped (not map values or list
//! items); zero numbers and false are kept (harmless, and `replicas: 0` means something), and so
//! are empty messages (`emptyDir: {}` means something too).
//!
//! Nothing here trusts the input: every read is bounds-checked, nesting is limited, and any
//! malformed body is a [`DecodeError`], which the API answers with 400.

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use serde_json::{Map, Number, Value};

/// The magic every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8] = b"k8s\0";
/// How deep messages may nest (Kubernetes objects nest a dozen levels at most).
const MAX_DEPTH: usize = 64;
const TABLE_GZ: &[u8] = include_bytes!("../openapi/protobuf.json.gz");
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
const EXT: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.";
/// Go's zero `time.Time` in Unix seconds.
const ZERO_TIME: i64 = -62_135_596_800;

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body does not start with `k8s\0`.
    #[error("the body does not start with the Kubernetes protobuf magic number")]
    NoMagic,
    /// The body ends inside a field.
    #[error("the body ends in the middle of a field")]
    Truncated,
    /// A varint longer than ten bytes.
    #[error("a varint is longer than 64 bits")]
    BadVarint,
    /// A wire type protobuf does not have, or the wrong one for a field.
    #[error("field {tag} of {message} has wire type {wire}, which does not fit its type")]
    WireType {
        /// The message.
        message: String,
        /// The field number.
        tag: u64,
        /// The wire type found.
        wire: u64,
    },
    /// Messages nested deeper than any Kubernetes object.
    #[error("messages nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The envelope names a kind this server does not serve.
    #[error("no kind \"{kind}\" is registered for version \"{api_version}\"")]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope's raw bytes are compressed or otherwise encoded.
    #[error("content encoding \"{0}\" is not supported")]
    ContentEncoding(String),
    /// A string field that is not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    NotUtf8(String),
    /// A `Time` past what RFC 3339 can write (years 1 to 9999, give or take).
    #[error("{message} holds a time out of range ({seconds} seconds since 1970)")]
    TimeOutOfRange {
        /// The message (`...meta.v1.Time`).
        message: String,
        /// Its seconds.
        seconds: i64,
    },
    /// A field holding raw JSON that does not parse.
    #[error("field {field} holds invalid JSON: {source}")]
    RawJson {
        /// The field.
        field: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// A field's type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
    Message,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "bytes" => Self::Bytes,
            "bool" => Self::Bool,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "uint32" => Self::Uint32,
            "uint64" => Self::Uint64,
            "double" => Self::Double,
            "float" => Self::Float,
            "message" => Self::Message,
            _ => return None,
        })
    }

    /// Whether repeated values of this kind may be packed into one length-delimited field.
    fn packable(self) -> bool {
        !matches!(self, Self::String | Self::Bytes | Self::Message)
    }
}

/// How a field holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Single,
    Repeated,
    /// `map<key kind, value kind>`: repeated entries with key 1 and value 2.
    Map,
    /// A Go embedded struct: its fields go into the enclosing JSON object.
    Inline,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: Kind,
    label: Label,
    value: Option<Kind>,
    message: String,
}

type Table = HashMap<String, HashMap<u64, Field>>;

/// The field table, by message name and field number.
static TABLE: LazyLock<Table> = LazyLock::new(|| {
    use std::io::Read;
    let mut text = Vec::new();
    let doc: Value = flate2::read::GzDecoder::new(TABLE_GZ)
        .read_to_end(&mut text)
        .ok()
        .and_then(|_| serde_json::from_slice(&text).ok())
        .unwrap_or(Value::Null);
    let mut table = Table::new();
    for (name, rows) in doc["messages"].as_object().into_iter().flatten() {
        let fields = table.entry(name.clone()).or_default();
        for row in rows.as_array().into_iter().flatten() {
            let col = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or("");
            let (Some(tag), Some(kind)) = (row.get(0).and_then(Value::as_u64), Kind::parse(col(2)))
            else {
                continue;
            };
            let label = match col(3) {
                "repeated" => Label::Repeated,
                "map" => Label::Map,
                "inline" => Label::Inline,
                _ => Label::Single,
            };
            let field = Field {
                name: col(1).to_owned(),
                kind,
                label,
                value: Kind::parse(col(4)),
                message: col(5).to_owned(),
            };
            fields.insert(tag, field);
        }
    }
    table
});

/// A bounds-checked reader over protobuf wire data.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.take(1)?.first().ok_or(DecodeError::Truncated)?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    fn delimited(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    /// Skips a field's value by its wire type.
    fn skip(&mut self, message: &str, tag: u64, wire: u64) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.fixed::<8>().map(drop),
            2 => self.delimited().map(drop),
            5 => self.fixed::<4>().map(drop),
            _ => Err(DecodeError::WireType {
                message: message.to_owned(),
                tag,
                wire,
            }),
        }
    }
}

/// Decodes a request body into the JSON object it stands for.
pub fn decode_object(body: &[u8]) -> Result<Value, DecodeError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(DecodeError::NoMagic)?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    let mut r = Reader { buf: envelope };
    while !r.done() {
        let key = r.varint()?;
        let (tag, wire) = (key >> 3, key & 7);
        match (tag, wire) {
            (1, 2) => {
                let mut meta = Reader {
                    buf: r.delimited()?,
                };
                while !meta.done() {
                    let key = meta.varint()?;
                    match (key >> 3, key & 7) {
                        (1, 2) => api_version = utf8(meta.delimited()?, "typeMeta.apiVersion")?,
                        (2, 2) => kind = utf8(meta.delimited()?, "typeMeta.kind")?,
                        (t, w) => meta.skip("TypeMeta", t, w)?,
                    }
                }
            }
            (2, 2) => raw = r.delimited()?,
            (3, 2) => encoding = utf8(r.delimited()?, "contentEncoding")?,
            (t, w) => r.skip("Unknown", t, w)?,
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::ContentEncoding(encoding));
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    // The options kinds (DeleteOptions...) are registered in every group version, and also in
    // meta.k8s.io/v1, which the definitions do not list.
    let meta_kind = format!("{META}{kind}");
    let definition = crate::schema::definition_for(group, version, &kind)
        .or_else(|| {
            let is_kind = crate::schema::DEFINITIONS
                .get(&meta_kind)
                .is_some_and(|d| d.get("x-kubernetes-group-version-kind").is_some());
            (api_version == "meta.k8s.io/v1" && is_kind).then_some(meta_kind.as_str())
        })
        .filter(|d| TABLE.contains_key(*d))
        .ok_or_else(|| DecodeError::UnknownKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let mut object = match decode_message(definition, raw, 0)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), Value::String(api_version));
    object.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(object))
}

fn utf8(bytes: &[u8], field: &str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8(field.to_owned()))
}

/// One scalar value of `kind` with wire type `wire` (not packed).
fn scalar(
    r: &mut Reader<'_>,
    kind: Kind,
    wire: u64,
    field: &str,
) -> Result<Option<Value>, DecodeError> {
    let wire_ok = match kind {
        Kind::String | Kind::Bytes | Kind::Message => wire == 2,
        Kind::Double => wire == 1,
        Kind::Float => wire == 5,
        _ => wire == 0,
    };
    if !wire_ok {
        return Ok(None);
    }
    Ok(Some(match kind {
        Kind::String => Value::String(utf8(r.delimited()?, field)?),
        Kind::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.delimited()?))
        }
        Kind::Bool => Value::Bool(r.varint()? != 0),
        // Two's complement in a varint, as protobuf writes negative numbers.
        Kind::Int32 => Value::from(r.varint()? as i64 as i32),
        Kind::Int64 => Value::from(r.varint()? as i64),
        Kind::Uint32 => Value::from(r.varint()? as u32),
        Kind::Uint64 => Value::from(r.varint()?),
        Kind::Double => {
            Number::from_f64(f64::from_le_bytes(r.fixed::<8>()?)).map_or(Value::Null, Value::Number)
        }
        Kind::Float => Number::from_f64(f64::from(f32::from_le_bytes(r.fixed::<4>()?)))
            .map_or(Value::Null, Value::Number),
        Kind::Message => return Ok(None),
    }))
}

/// Decodes one message into its JSON.
fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let fields = TABLE.get(name);
    let mut object = Map::new();
    let mut r = Reader { buf: bytes };
    while !r.done() {
        let key = r.varint()?;
        let (tag, wire) = (key >> 3, key & 7);
        let Some(field) = fields.and_then(|f| f.get(&tag)) else {
            // A field this version does not know: skipped, as protobuf readers do.
            r.skip(name, tag, wire)?;
            continue;
        };
        let wrong_wire = || DecodeError::WireType {
            message: name.to_owned(),
            tag,
            wire,
        };
        let value = |r: &mut Reader<'_>, kind: Kind, message: &str| -> Result<Value, DecodeError> {
            if kind == Kind::Message {
                if wire != 2 {
                    return Err(wrong_wire());
                }
                decode_message(message, r.delimited()?, depth + 1)
            } else {
                scalar(r, kind, wire, &field.name)?.ok_or_else(wrong_wire)
            }
        };
        match field.label {
            Label::Single => {
                let v = value(&mut r, field.kind, &field.message)?;
                // Go's omitempty: an empty string or a zero time reads as absent.
                if v.is_null() || v.as_str() == Some("") {
                    object.remove(&field.name);
                } else {
                    object.insert(field.name.clone(), v);
                }
            }
            Label::Inline => {
                if let Value::Object(inner) = value(&mut r, Kind::Message, &field.message)? {
                    object.extend(inner);
                }
            }
            Label::Repeated => {
                let list = object
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let mut items = Vec::new();
                if wire == 2 && field.kind.packable() {
                    let mut packed = Reader {
                        buf: r.delimited()?,
                    };
                    let inner_wire = match field.kind {
                        Kind::Double => 1,
                        Kind::Float => 5,
                        _ => 0,
                    };
                    while !packed.done() {
                        items.push(
                            scalar(&mut packed, field.kind, inner_wire, &field.name)?
                                .ok_or_else(wrong_wire)?,
                        );
                    }
                } else {
                    items.push(value(&mut r, field.kind, &field.message)?);
                }
                if let Value::Array(a) = list {
                    a.extend(items);
                }
            }
            Label::Map => {
                if wire != 2 {
                    return Err(wrong_wire());
                }
                let mut entry = Reader {
                    buf: r.delimited()?,
                };
                let (mut k, mut v) = (String::new(), None);
                while !entry.done() {
                    let key = entry.varint()?;
                    let (t, w) = (key >> 3, key & 7);
                    match t {
                        1 if w == 2 => k = utf8(entry.delimited()?, &field.name)?,
                        2 => {
                            let kind = field.value.unwrap_or(Kind::String);
                            v = Some(if kind == Kind::Message {
                                if w != 2 {
                                    return Err(wrong_wire());
                                }
                                decode_message(&field.message, entry.delimited()?, depth + 1)?
                            } else {
                                scalar(&mut entry, kind, w, &field.name)?.ok_or_else(wrong_wire)?
                            });
                        }
                        _ => entry.skip(name, t, w)?,
                    }
                }
                // A map value left out on the wire is the type's zero value.
                let v = match (v, field.value) {
                    (Some(v), _) => v,
                    (None, Some(Kind::Message)) => decode_message(&field.message, &[], depth + 1)?,
                    (None, Some(Kind::String | Kind::Bytes)) => Value::String(String::new()),
                    (None, _) => Value::Null,
                };
                if let Value::Object(m) = object
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    m.insert(k, v);
                }
            }
        }
    }
    special(name, object)
}

/// The messages whose JSON is not an object of their fields.
fn special(name: &str, mut o: Map<String, Value>) -> Result<Value, DecodeError> {
    let int = |o: &Map<String, Value>, f: &str| o.get(f).and_then(Value::as_i64).unwrap_or(0);
    let raw_json = |o: &mut Map<String, Value>, f: &str| -> Result<Value, DecodeError> {
        let Some(Value::String(b64)) = o.remove(f) else {
            return Ok(Value::Null);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        serde_json::from_slice(&bytes).map_err(|source| DecodeError::RawJson {
            field: format!("{name}.{f}"),
            source,
        })
    };
    let Some(short) = name
        .strip_prefix(META)
        .or_else(|| name.strip_prefix(EXT))
        .or_else(|| name.strip_prefix("io.k8s.apimachinery.pkg."))
    else {
        return Ok(Value::Object(o));
    };
    Ok(match short {
        "Time" | "MicroTime" => {
            // Go reads an empty message as the zero time, and writes the zero time as its Unix
            // seconds; both are `null` in Go's JSON, omitted here.
            let (seconds, nanos) = (int(&o, "seconds"), int(&o, "nanos"));
            if o.is_empty() || (seconds == ZERO_TIME && nanos == 0) {
                return Ok(Value::Null);
            }
            // As Go's time.Unix: nanoseconds outside 0..1e9 carry into the seconds.
            let t = jiff::Timestamp::from_nanosecond(
                i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
            )
            .map_err(|_| DecodeError::TimeOutOfRange {
                message: name.to_owned(),
                seconds,
            })?;
            let format = if short == "Time" {
                "%Y-%m-%dT%H:%M:%SZ"
            } else {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            };
            Value::String(t.strftime(format).to_string())
        }
        "Duration" => Value::String(go_duration(int(&o, "duration"))),
        "FieldsV1" => raw_json(&mut o, "raw")?,
        "runtime.RawExtension" | "JSON" => raw_json(&mut o, "raw")?,
        "api.resource.Quantity" => o.remove("string").unwrap_or(Value::String(String::new())),
        "util.intstr.IntOrString" => {
            if int(&o, "type") == 1 {
                o.remove("str_val").unwrap_or(Value::String(String::new()))
            } else {
                Value::from(int(&o, "int_val"))
            }
        }
        "Verbs" => o.remove("items").unwrap_or(Value::Array(Vec::new())),
        "JSONSchemaPropsOrBool" => match o.remove("schema") {
            Some(schema) => schema,
            None => o.remove("allows").unwrap_or(Value::Bool(false)),
        },
        "JSONSchemaPropsOrArray" => match o.remove("j_son_schemas") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a),
            _ => o.remove("schema").unwrap_or(Value::Null),
        },
        "JSONSchemaPropsOrStringArray" => match o.remove("property") {
            Some(Value::Array(a)) if !a.is_empty() => Value::Array(a),
            _ => o.remove("schema").unwrap_or(Value::Null),
        },
        _ => Value::Object(o),
    })
}

/// A duration in nanoseconds as Go's `time.Duration.String()` writes it (`1h2m3.5s`, `250ms`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let n = ns.unsigned_abs();
    let trim = |whole: u64, frac: u64, digits: usize, unit: &str| {
        let f = format!("{frac:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            format!("{sign}{whole}{unit}")
        } else {
            format!("{sign}{whole}.{f}{unit}")
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return trim(n / 1_000, n % 1_000, 3, "µs");
    }
    if n < 1_000_000_000 {
        return trim(n / 1_000_000, n % 1_000_000, 6, "ms");
    }
    let secs = n / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let seconds = trim(s, n % 1_000_000_000, 9, "s");
    let seconds = seconds.trim_start_matches('-');
    match (h, m) {
        (0, 0) => format!("{sign}{seconds}"),
        (0, m) => format!("{sign}{m}m{seconds}"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal protobuf writer for the tests (and the fuzz tests' seeds).
    #[derive(Default)]
    pub(crate) struct W(Vec<u8>);

    impl W {
        pub(crate) fn varint(mut self, mut v: u64) -> Self {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return self;
                }
                self.0.push(b | 0x80);
            }
        }
        pub(crate) fn key(self, tag: u64, wire: u64) -> Self {
            self.varint(tag << 3 | wire)
        }
        pub(crate) fn bytes(self, tag: u64, b: &[u8]) -> Self {
            let mut w = self.key(tag, 2).varint(b.len() as u64);
            w.0.extend_from_slice(b);
            w
        }
        pub(crate) fn str(self, tag: u64, s: &str) -> Self {
            self.bytes(tag, s.as_bytes())
        }
        pub(crate) fn msg(self, tag: u64, m: W) -> Self {
            self.bytes(tag, &m.0)
        }
        pub(crate) fn int(self, tag: u64, v: u64) -> Self {
            self.key(tag, 0).varint(v)
        }
        pub(crate) fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
    }

    pub(crate) fn envelope(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
        let meta = W::default().str(1, api_version).str(2, kind);
        let mut body = MAGIC.to_vec();
        body.extend(
            W::default()
                .msg(1, meta)
                .msg(2, raw)
                .str(3, "")
                .str(4, "")
                .0,
        );
        body
    }

    #[test]
    fn a_secret_with_time_bytes_and_maps() {
        let time = W::default().int(1, 1_767_225_600).int(2, 0);
        let meta = W::default()
            .str(1, "creds")
            .str(2, "")
            .str(3, "default")
            .msg(8, time);
        let entry = W::default().str(1, "password").bytes(2, b"s3cret");
        let raw = W::default().msg(1, meta).msg(2, entry).str(3, "Opaque");
        let v = decode_object(&envelope("v1", "Secret", raw)).expect("decodes");
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "creds", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "data": {"password": "czNjcmV0"},
            })
        );
    }

    #[test]
    fn quantities_int_or_strings_and_embedded_structs() {
        let quantity = W::default().str(1, "64Mi");
        let limits = W::default().str(1, "memory").msg(2, quantity);
        let resources = W::default().msg(1, limits);
        let port = W::default().int(1, 0).int(2, 8080);
        let container = W::default()
            .str(1, "app")
            .str(2, "registry.local/app:1")
            .msg(8, resources);
        let empty_dir = W::default();
        let volume_source = W::default().msg(2, empty_dir);
        let volume = W::default().str(1, "scratch").msg(2, volume_source);
        let spec = W::default().msg(1, volume).msg(2, container);
        let raw = W::default().msg(1, W::default().str(1, "p")).msg(2, spec);
        let pod = decode_object(&envelope("v1", "Pod", raw)).expect("decodes");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "64Mi"
        );
        assert_eq!(
            pod["spec"]["volumes"][0],
            serde_json::json!({"name": "scratch", "emptyDir": {}})
        );

        let service_port = W::default().str(1, "http").int(3, 80).msg(4, port);
        let raw = W::default()
            .msg(1, W::default().str(1, "s"))
            .msg(2, W::default().msg(1, service_port));
        let svc = decode_object(&envelope("v1", "Service", raw)).expect("decodes");
        assert_eq!(
            svc["spec"]["ports"][0],
            serde_json::json!({"name": "http", "port": 80, "targetPort": 8080})
        );
    }

    #[test]
    fn bad_bodies_are_errors_never_panics() {
        let good = envelope(
            "v1",
            "ConfigMap",
            W::default().msg(1, W::default().str(1, "c")),
        );
        for n in 0..good.len() {
            let _ = decode_object(&good[..n]);
        }
        assert!(matches!(decode_object(b"{}"), Err(DecodeError::NoMagic)));
        assert!(matches!(
            decode_object(&envelope("v1", "Gadget", W::default())),
            Err(DecodeError::UnknownKind { .. })
        ));
        // Pseudo-random bytes after the magic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut body = MAGIC.to_vec();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.push(x as u8);
            }
            let _ = decode_object(&body);
        }
        // Nesting past the limit: JSONSchemaProps' `not` (tag 28) holds another one.
        let mut deep = W::default();
        for _ in 0..(MAX_DEPTH + 2) {
            deep = W::default().msg(28, deep);
        }
        let props = format!("{EXT}JSONSchemaProps");
        assert!(matches!(
            decode_message(&props, &deep.0, 0),
            Err(DecodeError::TooDeep)
        ));
    }

    #[test]
    fn a_namespace_and_a_config_map_keep_what_go_would_print() {
        // Go writes every non-pointer field: empty strings and the zero time included.
        let zero = W::default().int(1, ZERO_TIME as u64).int(2, 0);
        let meta = W::default()
            .str(1, "team")
            .str(2, "")
            .str(3, "")
            .msg(8, zero)
            .msg(11, W::default().str(1, "tier").str(2, ""));
        let spec = W::default().str(1, "kubernetes");
        let raw = W::default()
            .msg(1, meta)
            .msg(2, spec)
            .msg(3, W::default().str(1, ""));
        let ns = decode_object(&envelope("v1", "Namespace", raw)).expect("decodes");
        assert_eq!(
            ns,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "team", "labels": {"tier": ""}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {},
            })
        );

        let raw = W::default()
            .msg(1, W::default().str(1, "settings").str(3, "team"))
            .msg(2, W::default().str(1, "interval").str(2, "5"))
            .msg(2, W::default().str(1, "empty").str(2, ""))
            .msg(3, W::default().str(1, "blob").bytes(2, &[0, 1, 2, 255]))
            .int(4, 0);
        let cm = decode_object(&envelope("v1", "ConfigMap", raw)).expect("decodes");
        assert_eq!(
            cm,
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "team"},
                "data": {"interval": "5", "empty": ""},
                "binaryData": {"blob": "AAEC/w=="},
                "immutable": false,
            })
        );
    }

    #[test]
    fn micro_times_managed_fields_and_string_int_or_strings() {
        let renew = W::default().int(1, 1_767_225_600).int(2, 123_456_789);
        let spec = W::default().str(1, "node-a").int(2, 40).msg(4, renew);
        let fields = W::default().bytes(1, br#"{"f:spec":{"f:holderIdentity":{}}}"#);
        let entry = W::default()
            .str(1, "kubelet")
            .str(2, "Update")
            .str(6, "FieldsV1")
            .msg(7, fields);
        let meta = W::default().str(1, "node-a").msg(17, entry);
        let raw = W::default().msg(1, meta).msg(2, spec);
        let lease =
            decode_object(&envelope("coordination.k8s.io/v1", "Lease", raw)).expect("decodes");
        assert_eq!(lease["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(
            lease["spec"],
            serde_json::json!({"holderIdentity": "node-a", "leaseDurationSeconds": 40,
                               "renewTime": "2026-01-01T00:00:00.123456Z"})
        );
        assert_eq!(
            lease["metadata"]["managedFields"][0]["fieldsV1"],
            serde_json::json!({"f:spec": {"f:holderIdentity": {}}})
        );

        let bad = W::default().msg(
            1,
            W::default().msg(17, W::default().msg(7, W::default().bytes(1, b"{not json"))),
        );
        assert!(matches!(
            decode_object(&envelope("v1", "ConfigMap", bad)),
            Err(DecodeError::RawJson { .. })
        ));

        let named = W::default().int(1, 1).str(3, "http");
        let port = W::default().int(3, 80).msg(4, named);
        let raw = W::default().msg(2, W::default().msg(1, port));
        let svc = decode_object(&envelope("v1", "Service", raw)).expect("decodes");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    }

    #[test]
    fn packed_and_unpacked_scalars_unknown_fields_and_wrong_wire_types() {
        // supplementalGroups (4): once packed, twice not; then fields from a newer version.
        let packed = W::default().varint(5).varint(300);
        let context = W::default()
            .bytes(4, &packed.0)
            .int(4, 7)
            .int(4, u64::MAX) // -1 as a two's-complement varint
            .int(99, 1)
            .str(98, "ignored")
            .key(97, 1)
            .raw(&[0; 8])
            .key(96, 5)
            .raw(&[0; 4]);
        let spec = W::default().msg(14, context);
        let raw = W::default().msg(1, W::default().str(1, "p")).msg(2, spec);
        let pod = decode_object(&envelope("v1", "Pod", raw)).expect("decodes");
        assert_eq!(
            pod["spec"]["securityContext"],
            serde_json::json!({"supplementalGroups": [5, 300, 7, -1]})
        );

        // A string field sent as a varint.
        let raw = W::default().msg(1, W::default().int(1, 5));
        assert!(matches!(
            decode_object(&envelope("v1", "ConfigMap", raw)),
            Err(DecodeError::WireType {
                tag: 1,
                wire: 0,
                ..
            })
        ));
    }

    #[test]
    fn delete_options_in_any_group_version() {
        let preconditions = W::default().str(1, "uid-1");
        let raw = W::default()
            .int(1, 0)
            .msg(2, preconditions)
            .str(4, "Background");
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let options = decode_object(&envelope(api_version, "DeleteOptions", W(raw.0.clone())))
                .expect("decodes");
            assert_eq!(
                options,
                serde_json::json!({
                    "apiVersion": api_version, "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": "uid-1"}, "propagationPolicy": "Background",
                })
            );
        }
        assert!(matches!(
            decode_object(&envelope("meta.k8s.io/v1", "ObjectMeta", W::default())),
            Err(DecodeError::UnknownKind { .. })
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(250_000_000), "250ms");
        assert_eq!(go_duration(-90_000_000_000), "-1m30s");
    }
}
