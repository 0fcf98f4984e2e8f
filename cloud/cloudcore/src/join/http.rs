//! Placeholder.
/// Placeholder.
pub async fn handle(
    _ctx: &super::JoinContext,
    _method: &http::Method,
    _path: &str,
    _headers: &http::HeaderMap,
    _body: bytes::Bytes,
    _peer_node: Option<&str>,
) -> Option<http::Response<bytes::Bytes>> {
    None
}
