//! `wedge`: the operator's command line.
//!
//! `wedge up` runs the all-in-one cluster (API server, control plane, cloudcore and a local edge
//! with the sample pods); `wedge apiserver` and `wedge controllers` run those parts on their own.
//! `wedge token` makes the bootstrap tokens edges join with, `wedge node` revokes and lists edges'
//! certificates, `wedge kubeconfig` writes a user's kubeconfig and `wedge rbac` prints what
//! cloudcore needs on a real cluster; `wedge wasm run` runs a component by hand and `wedge image`
//! manages the edge's image store. The logic lives in the library crates; this binary parses and
//! prints. (`cloudcore` and `edgecore` are binaries of their own, in `src/bin/`.)

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc for the API server `wedge apiserver` and `wedge up` run:
/// its JSON is many small allocations, and glibc's malloc and free were a quarter of its CPU
/// (README, hub-fanout). `cloudcore` keeps the system allocator: mimalloc cost it 13 MiB and
/// 10 KiB more per connected edge.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wedge",
    version,
    about = "Wedge: Kubernetes at the edge, with WebAssembly pods"
)]
struct Cli {
    /// Where the edge keeps images, compiled components and pod logs.
    #[arg(
        long,
        global = true,
        env = "WEDGE_ROOT",
        default_value = "/var/lib/wedge"
    )]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Wasm components by hand.
    Wasm {
        #[command(subcommand)]
        command: commands::wasm::WasmCommand,
    },
    /// Manage the edge's image store.
    Image {
        #[command(subcommand)]
        command: commands::image::ImageCommand,
    },
    /// Run the embedded Kubernetes-compatible API server on its own.
    Apiserver(commands::apiserver::ApiserverArgs),
    /// Run the embedded control plane (scheduler, controllers) against an API server.
    Controllers(commands::controllers::ControllersArgs),
    /// The all-in-one cluster: API server, control plane, cloudcore and a local edge, with the
    /// sample Wasm app applied.
    // Boxed: its flags are many, and the enum is as large as its largest variant.
    Up(Box<commands::up::UpArgs>),
    /// Bootstrap tokens for edges to join with.
    Token {
        #[command(subcommand)]
        command: commands::token::TokenCommand,
    },
    /// Edge nodes' identities: revoke a node's certificates, list them.
    Node {
        #[command(subcommand)]
        command: commands::node::NodeCommand,
    },
    /// Write a kubeconfig for a user of the embedded API server (a client certificate; RBAC
    /// decides what the user may do).
    Kubeconfig(commands::kubeconfig::KubeconfigArgs),
    /// Print the RBAC manifest cloudcore needs on a real cluster (`kubectl apply -f -`).
    Rbac,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wedge_cli::init_tracing("warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wedge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Wasm { command } => commands::wasm::run(&cli.root, command).await,
            Command::Image { command } => commands::image::run(&cli.root, command).await,
            Command::Apiserver(args) => commands::apiserver::run(&cli.root, args).await,
            Command::Controllers(args) => commands::controllers::run(args).await,
            Command::Up(args) => commands::up::run(&cli.root, *args).await,
            Command::Token { command } => commands::token::run(&cli.root, command).await,
            Command::Node { command } => commands::node::run(&cli.root, command).await,
            Command::Kubeconfig(args) => commands::kubeconfig::run(&cli.root, &args),
            Command::Rbac => commands::rbac::run(),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wedge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
