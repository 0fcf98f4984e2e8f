//! The containerd fixture against the real containerd: pods run through CRI on the fixture's
//! network and cgroup parent, busybox pulls from a local registry (directly, with credentials, or as
//! a docker.io mirror), containers outlive a containerd restart, fixtures run side by side, and a
//! dropped fixture leaves nothing on the machine, whether containerd still ran or not.
//!
//! Run with `--nocapture` to see the timings each test prints.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, bail};
use wedge_testkit::container_images::{self, push_busybox, push_busybox_with_auth};
use wedge_testkit::containerd::{Containerd, Traces, cri};
use wedge_testkit::registry::Registry;

/// Starts a fixture, printing how long it took.
fn start() -> anyhow::Result<Containerd> {
    let started = Instant::now();
    let containerd = Containerd::start()?;
    eprintln!("containerd fixture started in {:?}", started.elapsed());
    Ok(containerd)
}

/// Drops `containerd` and checks that nothing it made remains.
fn drop_and_check(containerd: Containerd) {
    let traces = containerd.traces();
    let started = Instant::now();
    drop(containerd);
    eprintln!("containerd fixture cleaned up in {:?}", started.elapsed());
    assert_clean(&traces);
}

fn assert_clean(traces: &Traces) {
    let remaining = traces.remaining();
    assert!(
        remaining.is_empty(),
        "left behind by the fixture in {}:\n{}",
        traces.dir().display(),
        remaining.join("\n")
    );
}

/// Pulls `image` through CRI; returns the image's ID.
async fn pull(
    containerd: &Containerd,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut images = containerd.image_client().await?;
    let response = images
        .pull_image(cri::PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("pulling {image}"))?;
    eprintln!("pulled {image} in {:?}", started.elapsed());
    Ok(response.into_inner().image_ref)
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

/// A running pod with one container.
struct Pod {
    id: String,
    container: String,
}

/// Runs a pod `name` with one busybox container running `sleep 3600`.
async fn run_sleeper(containerd: &Containerd, image: &str, name: &str) -> anyhow::Result<Pod> {
    let mut runtime = containerd.runtime_client().await?;
    let config = containerd.pod_config(name)?;
    let id = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let container = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "sleeper".to_owned(),
                    attempt: 0,
                }),
                image: Some(image_spec(image)),
                command: vec!["sleep".to_owned(), "3600".to_owned()],
                log_path: "sleeper.log".to_owned(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;
    Ok(Pod { id, container })
}

/// The container's state and the pid of its process (from the verbose status's `info`).
async fn container_state(containerd: &Containerd, container: &str) -> anyhow::Result<(i32, u64)> {
    let mut runtime = containerd.runtime_client().await?;
    let response = runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: container.to_owned(),
            verbose: true,
        })
        .await?
        .into_inner();
    let state = response.status.context("no container status")?.state;
    let info: HashMap<String, String> = response.info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").context("no verbose info")?)?;
    let pid = info["pid"].as_u64().context("no pid in the verbose info")?;
    Ok((state, pid))
}

/// The pod's IP from PodSandboxStatus.
async fn pod_ip(containerd: &Containerd, pod: &str) -> anyhow::Result<Ipv4Addr> {
    let mut runtime = containerd.runtime_client().await?;
    let status = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_owned(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no pod status")?;
    let ip = status.network.context("no pod network status")?.ip;
    ip.parse()
        .with_context(|| format!("pod IP {ip:?} is not IPv4"))
}

/// Runs `command` in the container; returns its stdout.
async fn exec(
    containerd: &Containerd,
    container: &str,
    command: &[&str],
) -> anyhow::Result<String> {
    let mut runtime = containerd.runtime_client().await?;
    let response = runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: container.to_owned(),
            cmd: command.iter().map(|arg| (*arg).to_owned()).collect(),
            timeout: 10,
        })
        .await?
        .into_inner();
    if response.exit_code != 0 {
        bail!(
            "{command:?} exited with {}: {}",
            response.exit_code,
            String::from_utf8_lossy(&response.stderr)
        );
    }
    Ok(String::from_utf8(response.stdout)?)
}

/// Checks that the pod's container runs, in the fixture's subnet and cgroup parent.
async fn check_running(containerd: &Containerd, pod: &Pod) -> anyhow::Result<u64> {
    let (state, pid) = container_state(containerd, &pod.container).await?;
    assert_eq!(state, cri::ContainerState::ContainerRunning as i32);
    let ip = pod_ip(containerd, &pod.id).await?;
    assert!(
        containerd.in_pod_subnet(ip),
        "pod IP {ip} not in {}",
        containerd.pod_subnet()
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        cgroup.contains(&format!(
            ":memory:{}/{}",
            containerd.cgroup_parent(),
            pod.container
        )),
        "container process {pid} not under the fixture's cgroup parent:\n{cgroup}"
    );
    assert_eq!(
        exec(containerd, &pod.container, &["sh", "-c", "echo $((6 * 7))"]).await?,
        "42\n"
    );
    Ok(pid)
}

#[tokio::test]
async fn a_pod_runs_and_nothing_of_it_remains() -> anyhow::Result<()> {
    let test_started = Instant::now();
    let registry = Registry::start()?;
    let image = push_busybox(&registry, "busybox:1.35")?;
    let containerd = start()?;
    containerd.add_registry_host(&registry.host(), &format!("http://{}", registry.host()))?;
    pull(&containerd, &image, None).await?;
    let pod = run_sleeper(&containerd, &image, "sleeper").await?;
    let pid = check_running(&containerd, &pod).await?;

    let traces = containerd.traces();
    // containerd, the shim, pause and sleep at least.
    assert!(traces.process_count() >= 4, "{traces:?}");
    let before = traces.remaining();
    for expected in [
        format!("process {pid} "),
        format!("link {}", containerd.bridge()),
        "mount ".to_owned(),
        "cgroup ".to_owned(),
        "NAT rule ".to_owned(),
        "CNI result ".to_owned(),
    ] {
        assert!(
            before.iter().any(|trace| trace.starts_with(&expected)),
            "the traces miss {expected:?}: {before:#?}"
        );
    }
    drop_and_check(containerd);
    eprintln!("whole test in {:?}", test_started.elapsed());
    Ok(())
}

#[tokio::test]
async fn docker_io_busybox_pulls_from_the_mirror() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    push_busybox(&registry, "library/busybox:1.35")?;
    let containerd = start()?;
    containerd.add_mirror("docker.io", &format!("http://{}", registry.host()))?;
    let id = pull(&containerd, "docker.io/library/busybox:1.35", None).await?;
    // The short name is the same image to CRI.
    assert_eq!(pull(&containerd, "busybox:1.35", None).await?, id);
    let mut images = containerd.image_client().await?;
    let image = images
        .image_status(cri::ImageStatusRequest {
            image: Some(image_spec("docker.io/library/busybox:1.35")),
            verbose: false,
        })
        .await?
        .into_inner()
        .image
        .context("the pulled image is not listed")?;
    assert!(
        image
            .repo_tags
            .contains(&"docker.io/library/busybox:1.35".to_owned()),
        "{image:?}"
    );
    drop_and_check(containerd);
    Ok(())
}

#[tokio::test]
async fn a_private_registry_wants_credentials() -> anyhow::Result<()> {
    let registry = Registry::start_with_auth("edge", "s3cret")?;
    let image = push_busybox_with_auth(&registry, "private/busybox:1.35", "edge", "s3cret")?;
    let containerd = start()?;
    containerd.add_registry_host(&registry.host(), &format!("http://{}", registry.host()))?;
    assert!(pull(&containerd, &image, None).await.is_err());
    let auth = cri::AuthConfig {
        username: "edge".to_owned(),
        password: "s3cret".to_owned(),
        ..Default::default()
    };
    pull(&containerd, &image, Some(auth)).await?;
    drop_and_check(containerd);
    Ok(())
}

#[tokio::test]
async fn containers_outlive_a_containerd_restart() -> anyhow::Result<()> {
    let mut containerd = start()?;
    // No registry: the image goes in as an archive.
    let busybox = container_images::busybox()?;
    assert_eq!(
        containerd.import_image(&busybox.docker_archive())?,
        [container_images::BUSYBOX_IMAGE]
    );
    let pod = run_sleeper(&containerd, busybox.reference(), "survivor").await?;
    let pid = check_running(&containerd, &pod).await?;
    let containerd_pid = containerd.pid();
    let started = Instant::now();
    containerd.restart()?;
    eprintln!("containerd restarted in {:?}", started.elapsed());
    assert_ne!(containerd.pid(), containerd_pid);
    assert_eq!(
        check_running(&containerd, &pod).await?,
        pid,
        "the same process"
    );
    drop_and_check(containerd);
    Ok(())
}

#[tokio::test]
async fn cleanup_by_force_when_containerd_is_gone() -> anyhow::Result<()> {
    let mut containerd = start()?;
    let busybox = container_images::busybox()?;
    containerd.import_image(&busybox.docker_archive())?;
    let pod = run_sleeper(&containerd, busybox.reference(), "orphan").await?;
    check_running(&containerd, &pod).await?;
    // Without containerd nothing is stopped through CRI and no CNI DEL runs: shims, containers,
    // mounts, cgroups, NAT rules and CNI results must all go by force.
    containerd.stop()?;
    drop_and_check(containerd);
    Ok(())
}

#[tokio::test]
async fn fixtures_side_by_side() -> anyhow::Result<()> {
    let (first, second) = tokio::try_join!(
        tokio::task::spawn_blocking(start),
        tokio::task::spawn_blocking(start)
    )?;
    let (first, second) = (first?, second?);
    assert_ne!(first.pod_subnet(), second.pod_subnet());
    assert_ne!(first.bridge(), second.bridge());
    assert_ne!(first.cgroup_parent(), second.cgroup_parent());
    let busybox = container_images::busybox()?;
    for containerd in [&first, &second] {
        containerd.import_image(&busybox.docker_archive())?;
    }
    let (a, b) = tokio::try_join!(
        run_sleeper(&first, busybox.reference(), "left"),
        run_sleeper(&second, busybox.reference(), "right")
    )?;
    check_running(&first, &a).await?;
    check_running(&second, &b).await?;
    // The pod's network works: it reaches the host at its bridge's address.
    let ping = format!("ping -c 1 -W 2 {}", first.gateway());
    exec(&first, &a.container, &["sh", "-c", &ping]).await?;
    drop_and_check(first);
    // The second one is untouched by the first one's cleanup.
    check_running(&second, &b).await?;
    drop_and_check(second);
    Ok(())
}

#[tokio::test]
async fn pods_outside_the_cgroup_parent_are_cleaned_up_too() -> anyhow::Result<()> {
    let mut containerd = start()?;
    let mut runtime = containerd.runtime_client().await?;
    let mut config = containerd.pod_config("stray")?;
    if let Some(linux) = config.linux.as_mut() {
        linux.cgroup_parent.clear();
    }
    let id = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let traces = containerd.traces();
    let stray = format!("/sys/fs/cgroup/memory/k8s.io/{id}");
    assert!(
        traces.remaining().contains(&format!("cgroup {stray}")),
        "{:#?}",
        traces.remaining()
    );
    // By force, so that no CRI call removes the cgroups first.
    containerd.stop()?;
    drop_and_check(containerd);
    Ok(())
}
