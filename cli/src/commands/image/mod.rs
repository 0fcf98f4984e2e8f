//! `wedge image`: import OCI layouts for air-gapped edges, list what the edge holds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

/// `wedge image ...`
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (a directory, or a tar of one) into the edge's store.
    Import {
        /// The layout directory or tar file.
        path: PathBuf,
        /// The name pods will use (`registry/repo:tag`); needed if the layout names no image.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images the edge holds.
    List,
}

/// Runs an image subcommand.
pub async fn run(root: &Path, command: ImageCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime(root, &[], false)?;
    match command {
        ImageCommand::Import { path, name } => {
            for image in runtime.images().import(&path, name.as_deref()).await? {
                println!(
                    "imported {} ({})",
                    image.stored.reference, image.stored.manifest_digest
                );
            }
        }
        ImageCommand::List => {
            println!("{:<60} {:<16} DIGEST", "IMAGE", "LAYOUT");
            for image in runtime.images().store().list()? {
                let layout = format!("{:?}", image.layout);
                println!(
                    "{:<60} {layout:<16} {}",
                    image.reference, image.manifest_digest
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
