//! [`CriRuntime`]: the two runtime traits over containerd's CRI, call for call.
//!
//! Each method builds a request from the pure mappings ([`crate::sandbox`],
//! [`crate::container`], [`crate::image`]), makes one call (two where CRI splits what the trait
//! returns) and sorts failures through [`crate::errors`]; `exec` and `attach` hand the URL their
//! call returns to [`crate::streaming`], which runs the session, and `port_forward` to
//! [`crate::portforward`]. The only state kept here is which sandbox each container belongs to, which CRI's `ContainerStatus` does not say; containerd
//! holds everything else, so a new `CriRuntime` (after edgecore restarts) sees what an old one
//! made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_cri::v1 as cri;
use tonic::Code;
use wedge_core::runtime::{
    self as rt, ContainerConfig, ContainerInfo, ContainerStats, ExecResult, ExecStreams, ImageInfo,
    PortStreams, PullAuth, RuntimeError, RuntimeService, SandboxConfig, SandboxStatus,
};

use crate::client::{Clients, REQUEST_TIMEOUT, call, request, socket_path};
use crate::container::{container_config, container_info, sandbox_config_for};
use crate::errors::{ConnectError, config_error, image_error, runtime_error};
use crate::image::{auth_config, image_info, image_spec};
use crate::portforward;
use crate::sandbox::{listed_sandbox, pod_sandbox_config, sandbox_status};
use crate::streaming::{self, Ended};
use crate::wait::{Cri, ExitWatch, POLL_INTERVAL};

/// The CRI API version this client speaks.
const CRI_VERSION: &str = "v1";

struct Inner {
    clients: Clients,
    exits: ExitWatch,
    /// Container id → sandbox id, learnt at create and list time.
    sandbox_of: Mutex<HashMap<String, String>>,
}

/// Containers through containerd's CRI (handler `runc`). Cheap to clone; the clones share one
/// connection and one wait poller, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct CriRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime").finish_non_exhaustive()
    }
}

fn container_object(id: &str) -> String {
    format!("container {id}")
}

fn sandbox_object(id: &str) -> String {
    format!("sandbox {id}")
}

/// Rounds up to whole seconds, the unit of CRI's timeouts.
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX)
}

impl CriRuntime {
    /// A runtime for the containerd at `endpoint` (`unix:///run/containerd/containerd.sock` or
    /// the bare path). Nothing is dialled yet: the first call connects, and calls fail with
    /// `Unavailable` until containerd answers. Must be called inside a Tokio runtime.
    pub fn connect(endpoint: &str) -> Result<Self, ConnectError> {
        Self::with_poll_interval(endpoint, POLL_INTERVAL)
    }

    /// [`CriRuntime::connect`] relisting containers for waiters every `interval`.
    pub fn with_poll_interval(endpoint: &str, interval: Duration) -> Result<Self, ConnectError> {
        let clients = Clients::new(socket_path(endpoint)?)?;
        let exits = ExitWatch::start(Arc::new(Cri(clients.runtime.clone())), interval);
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                exits,
                sandbox_of: Mutex::default(),
            }),
        })
    }

    /// Stops the wait poller and waits for it to end; pending waits fail with `Unavailable`.
    /// Dropping the last clone stops it too, without waiting.
    pub async fn shutdown(&self) {
        self.inner.exits.shutdown().await;
    }

    fn sandbox_of(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.inner
            .sandbox_of
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn runtime(
        &self,
    ) -> cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel> {
        self.inner.clients.runtime.clone()
    }

    fn images(&self) -> cri::image_service_client::ImageServiceClient<tonic::transport::Channel> {
        self.inner.clients.image.clone()
    }

    /// The sandbox of container `id`, from what this runtime saw or else from containerd.
    async fn sandbox_id_of(&self, id: &str) -> Result<String, RuntimeError> {
        if let Some(sandbox) = self.sandbox_of().get(id) {
            return Ok(sandbox.clone());
        }
        let filter = cri::ContainerFilter {
            id: id.to_owned(),
            ..Default::default()
        };
        let listed = self
            .runtime()
            .list_containers(call(cri::ListContainersRequest {
                filter: Some(filter),
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?
            .into_inner()
            .containers;
        let sandbox = listed
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.pod_sandbox_id)
            .ok_or_else(|| RuntimeError::NotFound(container_object(id)))?;
        self.sandbox_of().insert(id.to_owned(), sandbox.clone());
        Ok(sandbox)
    }

    /// `ContainerStatus` as [`ContainerInfo`], without its sandbox.
    async fn status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let response = self
            .runtime()
            .container_status(call(cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?
            .into_inner();
        let status = response.status.ok_or_else(|| {
            RuntimeError::Failed(format!("containerd returned no status for container {id}"))
        })?;
        Ok(container_info(status, String::new()))
    }
}

#[async_trait]
impl rt::ImageService for CriRuntime {
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&PullAuth>,
    ) -> Result<String, rt::ImageError> {
        let started = std::time::Instant::now();
        // No deadline: a large image on a slow link takes what it takes, and Edged cancels by
        // dropping the future.
        let response = self
            .images()
            .pull_image(request(
                cri::PullImageRequest {
                    image: Some(image_spec(image)),
                    auth: auth.map(auth_config),
                    sandbox_config: None,
                },
                None,
            ))
            .await
            .map_err(|s| image_error(s, image))?
            .into_inner();
        tracing::info!(image, id = %response.image_ref, elapsed = ?started.elapsed(), "pulled");
        Ok(response.image_ref)
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, rt::ImageError> {
        let response = self
            .images()
            .image_status(call(cri::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            }))
            .await;
        match response {
            Ok(r) => Ok(r.into_inner().image.map(image_info)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(image_error(s, image)),
        }
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, rt::ImageError> {
        let response = self
            .images()
            .list_images(call(cri::ListImagesRequest { filter: None }))
            .await
            .map_err(|s| image_error(s, ""))?;
        Ok(response
            .into_inner()
            .images
            .into_iter()
            .map(image_info)
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), rt::ImageError> {
        match self
            .images()
            .remove_image(call(cri::RemoveImageRequest {
                image: Some(image_spec(image)),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(image_error(s, image)),
        }
    }
}

#[async_trait]
impl RuntimeService for CriRuntime {
    fn handler(&self) -> &'static str {
        wedge_core::runtimes::RUNC
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self
            .runtime()
            .version(call(cri::VersionRequest {
                version: CRI_VERSION.to_owned(),
            }))
            .await
            .map_err(|s| runtime_error(s, "version"))?
            .into_inner();
        Ok(format!("{}://{}", v.runtime_name, v.runtime_version))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError> {
        let started = std::time::Instant::now();
        let object = format!("sandbox of pod {}/{}", config.namespace, config.name);
        let id = self
            .runtime()
            .run_pod_sandbox(call(cri::RunPodSandboxRequest {
                config: Some(pod_sandbox_config(config)),
                runtime_handler: String::new(),
            }))
            .await
            .map_err(|s| config_error(s, &object, "spec"))?
            .into_inner()
            .pod_sandbox_id;
        tracing::debug!(sandbox = %id, pod = %config.name, elapsed = ?started.elapsed(), "sandbox running");
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let result = self
            .runtime()
            .stop_pod_sandbox(call(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(runtime_error(s, &sandbox_object(id))),
        }
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let result = self
            .runtime()
            .remove_pod_sandbox(call(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            }))
            .await;
        match result {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(runtime_error(s, &sandbox_object(id))),
        }
        self.sandbox_of().retain(|_, sandbox| sandbox != id);
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        let response = self
            .runtime()
            .pod_sandbox_status(call(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: true,
            }))
            .await
            .map_err(|s| runtime_error(s, &sandbox_object(id)))?
            .into_inner();
        let status = response.status.ok_or_else(|| {
            RuntimeError::Failed(format!("containerd returned no status for sandbox {id}"))
        })?;
        Ok(sandbox_status(status, &response.info))
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let listed = self
            .runtime()
            .list_pod_sandbox(call(cri::ListPodSandboxRequest { filter: None }))
            .await
            .map_err(|s| runtime_error(s, "sandboxes"))?
            .into_inner()
            .items;
        // The list carries no IPs; each sandbox's status does.
        let statuses = join_all(listed.into_iter().map(|sandbox| async move {
            match self.sandbox_status(&sandbox.id).await {
                Ok(status) => Ok(Some(status)),
                // Removed since the list was taken.
                Err(RuntimeError::NotFound(_)) => Ok(None),
                Err(RuntimeError::Unavailable(e)) => Err(RuntimeError::Unavailable(e)),
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "sandbox status failed; listing it without its IP");
                    Ok(Some(listed_sandbox(sandbox)))
                }
            }
        }))
        .await;
        statuses.into_iter().filter_map(Result::transpose).collect()
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String, RuntimeError> {
        let object = format!("container {} of sandbox {sandbox_id}", config.name);
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            config: Some(container_config(config, sandbox)?),
            sandbox_config: Some(sandbox_config_for(config, sandbox)),
        };
        let id = self
            .runtime()
            .create_container(call(request))
            .await
            .map_err(|s| config_error(s, &object, "spec.containers"))?
            .into_inner()
            .container_id;
        self.sandbox_of().insert(id.clone(), sandbox_id.to_owned());
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime()
            .start_container(call(cri::StartContainerRequest {
                container_id: id.to_owned(),
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let result = self
            .runtime()
            .stop_container(request(
                cri::StopContainerRequest {
                    container_id: id.to_owned(),
                    timeout: whole_seconds(timeout),
                },
                // containerd waits out the grace period before it kills.
                Some(REQUEST_TIMEOUT.saturating_add(timeout)),
            ))
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(runtime_error(s, &container_object(id))),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let result = self
            .runtime()
            .remove_container(call(cri::RemoveContainerRequest {
                container_id: id.to_owned(),
            }))
            .await;
        match result {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(runtime_error(s, &container_object(id))),
        }
        self.sandbox_of().remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let mut info = self.status(id).await?;
        info.sandbox_id = self.sandbox_id_of(id).await?;
        Ok(info)
    }

    async fn list_containers(
        &self,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filter = sandbox_id.map(|s| cri::ContainerFilter {
            pod_sandbox_id: s.to_owned(),
            ..Default::default()
        });
        let listed = self
            .runtime()
            .list_containers(call(cri::ListContainersRequest { filter }))
            .await
            .map_err(|s| runtime_error(s, "containers"))?
            .into_inner()
            .containers;
        {
            let mut known = self.sandbox_of();
            for c in &listed {
                known.insert(c.id.clone(), c.pod_sandbox_id.clone());
            }
        }
        // The list has no exit codes or start times; each container's status has.
        let infos = join_all(listed.into_iter().map(|c| async move {
            match self.status(&c.id).await {
                Ok(mut info) => Ok(Some({
                    info.sandbox_id = c.pod_sandbox_id;
                    info
                })),
                Err(RuntimeError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        }))
        .await;
        infos.into_iter().filter_map(Result::transpose).collect()
    }

    async fn wait_container(&self, id: &str) -> Result<rt::Exit, RuntimeError> {
        self.inner.exits.wait(id).await
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let response = self
            .runtime()
            .exec_sync(request(
                cri::ExecSyncRequest {
                    container_id: id.to_owned(),
                    cmd: command.to_vec(),
                    timeout: whole_seconds(timeout),
                },
                Some(REQUEST_TIMEOUT.saturating_add(timeout)),
            ))
            .await;
        let response = match response {
            Ok(r) => r.into_inner(),
            // containerd ends the command at the timeout and says so with this code.
            Err(s) if s.code() == Code::DeadlineExceeded => {
                return Err(RuntimeError::Failed(format!(
                    "command {command:?} in container {id} timed out after {timeout:?}: {}",
                    s.message()
                )));
            }
            Err(s) => return Err(runtime_error(s, &container_object(id))),
        };
        Ok(ExecResult {
            exit_code: response.exit_code,
            stdout: response.stdout,
            stderr: response.stderr,
        })
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime()
            .reopen_container_log(call(cri::ReopenContainerLogRequest {
                container_id: id.to_owned(),
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?;
        Ok(())
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let stats = self
            .runtime()
            .container_stats(call(cri::ContainerStatsRequest {
                container_id: id.to_owned(),
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?
            .into_inner()
            .stats
            .unwrap_or_default();
        let cpu = stats
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map_or(0, |v| v.value);
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map_or(0, |v| v.value);
        Ok(ContainerStats {
            cpu: Duration::from_nanos(cpu),
            memory_bytes: memory,
        })
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        streams: ExecStreams,
    ) -> Result<i32, RuntimeError> {
        let url = self
            .runtime()
            .exec(call(cri::ExecRequest {
                container_id: id.to_owned(),
                cmd: command.to_vec(),
                tty: streams.tty,
                stdin: streams.stdin.is_some(),
                stdout: streams.stdout.is_some(),
                // containerd refuses stderr with a TTY: the terminal carries both.
                stderr: streams.stderr.is_some() && !streams.tty,
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?
            .into_inner()
            .url;
        tracing::debug!(container = id, ?command, tty = streams.tty, "exec session");
        let what = format!("exec {command:?} in container {id}");
        match streaming::run(&url, streams).await {
            Ok(Ended::Exited(code)) => {
                tracing::debug!(container = id, ?command, code, "exec ended");
                Ok(code)
            }
            // The caller asked for output and no longer reads any: nobody is left to tell.
            Ok(Ended::CallerGone) => Err(RuntimeError::Failed(format!(
                "{what}: the client stopped reading before the command ended"
            ))),
            Err(e) => Err(e.into_runtime_error(&what)),
        }
    }

    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        streams: PortStreams,
    ) -> Result<(), RuntimeError> {
        let url = self
            .runtime()
            .port_forward(call(cri::PortForwardRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                port: vec![i32::from(port)],
            }))
            .await
            .map_err(|s| runtime_error(s, &sandbox_object(sandbox_id)))?
            .into_inner()
            .url;
        tracing::debug!(sandbox = sandbox_id, port, "port-forward session");
        portforward::run(&url, port, streams)
            .await
            .map_err(|e| e.into_runtime_error(&sandbox_object(sandbox_id)))?;
        tracing::debug!(sandbox = sandbox_id, port, "port-forward ended");
        Ok(())
    }

    async fn attach(&self, id: &str, streams: ExecStreams) -> Result<(), RuntimeError> {
        let url = self
            .runtime()
            .attach(call(cri::AttachRequest {
                container_id: id.to_owned(),
                stdin: streams.stdin.is_some(),
                tty: streams.tty,
                stdout: streams.stdout.is_some(),
                stderr: streams.stderr.is_some() && !streams.tty,
            }))
            .await
            .map_err(|s| runtime_error(s, &container_object(id)))?
            .into_inner()
            .url;
        tracing::debug!(container = id, tty = streams.tty, "attach session");
        match streaming::run(&url, streams).await {
            // containerd reports success when the container's output ends (it exited); leaving
            // is the caller's to decide and no failure either.
            Ok(Ended::Exited(_) | Ended::CallerGone) => {
                tracing::debug!(container = id, "attach ended");
                Ok(())
            }
            Err(e) => Err(e.into_runtime_error(&format!("attach to container {id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(whole_seconds(Duration::MAX), i64::MAX);
    }
}
