//! The API server as the `apiserver` and `hub-fanout` scenarios run it in a process of its own:
//! `wedge-bench-apiserver apiserver-serve --data-dir DIR`, the protocol of `wedge-bench
//! apiserver-serve`, but with the allocator `wedge apiserver` runs it with (mimalloc), while
//! `wedge-bench` itself keeps the system's for the scenarios that measure edge parts, which run
//! on it in `edgecore`.

use std::io::BufRead;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [serve, flag, dir] if serve == "apiserver-serve" && flag == "--data-dir" => dir,
        _ => anyhow::bail!("usage: wedge-bench-apiserver apiserver-serve --data-dir DIR"),
    };
    wedge_cli::init_tracing("warn");
    let config =
        wedge_apiserver::ServerConfig::new(std::path::Path::new(dir), "127.0.0.1:0".parse()?);
    let server = wedge_apiserver::Server::start(config).await?;
    println!("{}", server.kubeconfig_path().display());
    // The parent holds our stdin; its end (or the parent's) ends us.
    tokio::task::spawn_blocking(|| std::io::stdin().lock().read_line(&mut String::new())).await??;
    server.shutdown().await;
    Ok(())
}
