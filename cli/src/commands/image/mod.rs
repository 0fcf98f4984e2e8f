//! `wedge image`: import images for air-gapped edges, list what the edge holds.
//!
//! An edge holds images in two places: Wasm images in the Wasm runtime's store, container
//! images in containerd. `import` puts an archive where its kind belongs, so an operator
//! carrying images to an edge with no registry need not know which runtime runs them: an OCI
//! layout whose image is Wasm goes to the store, a container image (an OCI archive, or a
//! docker archive as `docker save` writes) to containerd ([`containerd`]).

mod containerd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use wedge_edged_wasm::oci::ImageError;

/// `wedge image ...`
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an image: a Wasm OCI layout (a directory, or a tar of one) into the edge's store,
    /// or a container image (an OCI or docker archive) into containerd.
    Import {
        /// The layout directory or tar file.
        path: PathBuf,
        /// The name pods will use (`registry/repo:tag`); needed if the archive names no image.
        #[arg(long)]
        name: Option<String>,
        /// containerd's socket, where container images are imported (with `ctr`).
        #[arg(
            long,
            env = "WEDGE_CONTAINER_RUNTIME_ENDPOINT",
            default_value = wedge_edge::agent::DEFAULT_CRI_ENDPOINT
        )]
        container_runtime_endpoint: String,
    },
    /// List the Wasm images the edge holds (`ctr -n k8s.io images ls` lists containerd's).
    List,
}

/// Runs an image subcommand.
pub async fn run(root: &Path, command: ImageCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime(root, &[], false)?;
    match command {
        ImageCommand::Import {
            path,
            name,
            container_runtime_endpoint,
        } => {
            // Tried as Wasm first: the store classifies the image from its manifest and config
            // (`wedge_oci::media::classify`) and refuses container images.
            match runtime.images().import(&path, name.as_deref()).await {
                Ok(images) => {
                    for image in images {
                        println!(
                            "imported {} ({})",
                            image.stored.reference, image.stored.manifest_digest
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                // A container image in an OCI layout: its manifest said so.
                Err(ImageError::NotWasm(_)) => {}
                // Not an OCI layout: a docker archive is a container image.
                Err(error @ ImageError::Layout(_)) => {
                    if !containerd::is_docker_archive(&path).await {
                        return Err(error.into());
                    }
                }
                Err(error) => return Err(error.into()),
            }
            let imported =
                containerd::import(&container_runtime_endpoint, &path, name.as_deref()).await?;
            for image in imported {
                println!("imported {image} into containerd");
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
