//! The API server as a process of its own, for tests that kill it: `<data dir> <port>`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(port)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: wedge-apiserver-test <data dir> <port>");
    };
    let listen = format!("127.0.0.1:{port}").parse()?;
    let server =
        wedge_apiserver::Server::start(wedge_apiserver::ServerConfig::new(dir, listen)).await?;
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
