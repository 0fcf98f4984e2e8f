//! A scripted runtime for Edged's unit tests: containers that exit with the codes a test
//! chooses after a second of (paused) time, images that fail to pull a chosen number of times,
//! and a runtime that can be taken down. Every call is recorded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use wedge_core::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ContainerStats, ExecResult, Exit, ImageError,
    ImageInfo, ImageService, PullAuth, RuntimeError, RuntimeService, SandboxConfig, SandboxStatus,
};

/// How long a scripted instance runs before it exits.
pub const RUN_FOR: Duration = Duration::from_secs(1);
/// What every container of the fake uses.
pub const FAKE_STATS: ContainerStats = ContainerStats {
    cpu: Duration::from_millis(250),
    memory_bytes: 4 << 20,
};

#[derive(Default)]
struct State {
    calls: Vec<String>,
    /// Per container name, the exit code of each next instance (`None`: runs until stopped).
    exits: HashMap<String, VecDeque<Option<i32>>>,
    /// Containers that ignore SIGTERM and need the SIGKILL at the timeout.
    stubborn: HashSet<String>,
    pull_failures: HashMap<String, u32>,
    /// Per container name, the exit codes of the next commands run in it (then 0).
    exec_codes: HashMap<String, VecDeque<i32>>,
    held: HashSet<String>,
    /// Per container name, how long starting an instance takes.
    slow_starts: HashMap<String, Duration>,
    sandboxes: BTreeMap<String, SandboxStatus>,
    containers: BTreeMap<String, (ContainerInfo, tokio::sync::watch::Sender<Option<Exit>>)>,
    /// Per container id, its log file.
    logs: HashMap<String, std::path::PathBuf>,
    next: u32,
    down: bool,
    /// Forwarded connections open now.
    forwarding: usize,
    /// Per port, the bytes forwarded connections brought to the pod.
    received: HashMap<u16, Vec<u8>>,
    /// Per port, how many bytes the pod's side wrote.
    written: HashMap<u16, usize>,
    /// Port-forward is refused as unsupported, with this message.
    no_forwarding: Option<String>,
}

/// The fake runtime.
#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
    handler: &'static str,
}

impl Default for Fake {
    fn default() -> Self {
        Self::with_handler("fake")
    }
}

impl Fake {
    /// A fake answering to `handler`.
    pub fn with_handler(handler: &'static str) -> Self {
        Self {
            state: Arc::default(),
            handler,
        }
    }

    /// The runtime holds `image` (pulled before).
    pub fn hold_image(&self, image: &str) {
        self.lock().held.insert(image.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Instances of container `name` exit with these codes, in turn (`None`: runs until
    /// stopped); past the script, instances run until stopped.
    pub fn script(&self, name: &str, exits: &[Option<i32>]) {
        self.lock()
            .exits
            .insert(name.to_owned(), exits.iter().copied().collect());
    }

    /// Commands run in container `name` exit with these codes, in turn, then 0.
    pub fn exec_codes(&self, name: &str, codes: &[i32]) {
        self.lock()
            .exec_codes
            .insert(name.to_owned(), codes.iter().copied().collect());
    }

    /// Starting an instance of container `name` takes `time`: its log file exists (created
    /// with the instance, as the Wasm runtime creates it) and is empty meanwhile.
    pub fn slow_start(&self, name: &str, time: Duration) {
        self.lock().slow_starts.insert(name.to_owned(), time);
    }

    /// Container `name` ignores SIGTERM.
    pub fn stubborn(&self, name: &str) {
        self.lock().stubborn.insert(name.to_owned());
    }

    /// Pulling `image` fails `times` times first.
    pub fn fail_pulls(&self, image: &str, times: u32) {
        self.lock().pull_failures.insert(image.to_owned(), times);
    }

    /// Takes the runtime down or brings it back.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The runtime refuses port-forward as unsupported, saying `message` (as the Wasm runtime
    /// does for a pod without a network).
    pub fn refuse_forwarding(&self, message: &str) {
        self.lock().no_forwarding = Some(message.to_owned());
    }

    /// How many forwarded connections are open.
    pub fn forwarding(&self) -> usize {
        self.lock().forwarding
    }

    /// What forwarded connections to `port` brought to the pod so far.
    pub fn received(&self, port: u16) -> Vec<u8> {
        self.lock().received.get(&port).cloned().unwrap_or_default()
    }

    /// How many bytes the pod's side of connections to `port` wrote so far.
    pub fn written(&self, port: u16) -> usize {
        self.lock().written.get(&port).copied().unwrap_or(0)
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Holds a running sandbox and container from before, as containerd does across a restart
    /// of edgecore.
    pub fn preexisting(&self, uid: &str, name: &str, attempt: u32) -> String {
        let mut s = self.lock();
        let sandbox = format!("sb-old-{uid}");
        s.sandboxes.insert(
            sandbox.clone(),
            SandboxStatus {
                id: sandbox.clone(),
                ready: true,
                ip: Some("10.88.0.9".into()),
                netns: None,
                created_at: Timestamp::UNIX_EPOCH,
                labels: BTreeMap::from([(
                    wedge_core::runtime::labels::POD_UID.to_owned(),
                    uid.to_owned(),
                )]),
            },
        );
        let id = format!("c-old-{uid}-{name}");
        let info = ContainerInfo {
            id: id.clone(),
            sandbox_id: sandbox,
            name: name.to_owned(),
            attempt,
            image_id: Some("img@sha256:1".into()),
            state: ContainerState::Running {
                started_at: Timestamp::UNIX_EPOCH,
            },
            labels: BTreeMap::new(),
        };
        s.containers
            .insert(id.clone(), (info, tokio::sync::watch::Sender::new(None)));
        id
    }

    /// Holds, from before, the sandbox of a pod whose container `name` exited with `code`:
    /// stopped (`ready: false`, as Edged leaves a finished pod's) or still running.
    pub fn preexisting_exited(&self, uid: &str, name: &str, code: i32, ready: bool) -> String {
        let id = self.preexisting(uid, name, 0);
        let mut s = self.lock();
        if let Some(sandbox) = s.sandboxes.get_mut(&format!("sb-old-{uid}")) {
            sandbox.ready = ready;
        }
        if let Some((info, tx)) = s.containers.get_mut(&id) {
            let exit = Exit {
                code,
                reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
                message: None,
                started_at: Timestamp::UNIX_EPOCH,
                finished_at: Timestamp::UNIX_EPOCH,
            };
            info.state = ContainerState::Exited(exit.clone());
            tx.send_replace(Some(exit));
        }
        id
    }

    fn call(&self, what: String) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        s.calls.push(what);
        if s.down {
            return Err(RuntimeError::Unavailable("connection refused".into()));
        }
        Ok(())
    }

    fn exit(&self, id: &str, code: i32, reason: &str) {
        let mut s = self.lock();
        if let Some((info, tx)) = s.containers.get_mut(id) {
            let started_at = match info.state {
                ContainerState::Running { started_at } => started_at,
                _ => Timestamp::now(),
            };
            if matches!(info.state, ContainerState::Exited(_)) {
                return;
            }
            let exit = Exit {
                code,
                reason: reason.to_owned(),
                message: None,
                started_at,
                finished_at: Timestamp::now(),
            };
            info.state = ContainerState::Exited(exit.clone());
            tx.send_replace(Some(exit));
        }
    }
}

#[async_trait]
impl ImageService for Fake {
    async fn pull_image(
        &self,
        image: &str,
        _auth: Option<&PullAuth>,
    ) -> Result<String, ImageError> {
        self.call(format!("pull {image}"))
            .map_err(|e| ImageError::Unavailable(e.to_string()))?;
        let mut s = self.lock();
        if let Some(n) = s.pull_failures.get_mut(image)
            && *n > 0
        {
            *n -= 1;
            return Err(ImageError::NotFound {
                reference: image.to_owned(),
                message: "manifest unknown".into(),
            });
        }
        s.held.insert(image.to_owned());
        Ok(format!("sha256:{image}"))
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, ImageError> {
        if self.lock().down {
            return Err(ImageError::Unavailable("connection refused".into()));
        }
        Ok(self.lock().held.contains(image).then(|| ImageInfo {
            id: format!("sha256:{image}"),
            repo_tags: vec![image.to_owned()],
            repo_digests: Vec::new(),
            size_bytes: 1,
        }))
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, ImageError> {
        Ok(self
            .lock()
            .held
            .iter()
            .map(|image| ImageInfo {
                id: format!("sha256:{image}"),
                repo_tags: vec![image.clone()],
                repo_digests: Vec::new(),
                size_bytes: 1,
            })
            .collect())
    }

    async fn remove_image(&self, _image: &str) -> Result<(), ImageError> {
        Ok(())
    }
}

#[async_trait]
impl RuntimeService for Fake {
    fn handler(&self) -> &'static str {
        self.handler
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake://1".into())
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<String, RuntimeError> {
        match &config.netns {
            Some(netns) => self.call(format!(
                "run_sandbox {} in {}",
                config.name,
                netns.display()
            ))?,
            None => self.call(format!("run_sandbox {}", config.name))?,
        }
        let mut s = self.lock();
        s.next += 1;
        let (id, ip) = (format!("sb{}", s.next), format!("10.88.0.{}", s.next));
        // A sandbox that joins a namespace has no address of its own; one that makes its own
        // says where it is.
        let (ip, netns) = match &config.netns {
            Some(netns) => (None, Some(netns.clone())),
            None => (
                Some(ip),
                Some(std::path::PathBuf::from(format!(
                    "/var/run/netns/{}-{id}",
                    self.handler
                ))),
            ),
        };
        s.sandboxes.insert(
            id.clone(),
            SandboxStatus {
                id: id.clone(),
                ready: true,
                ip,
                netns,
                created_at: Timestamp::now(),
                labels: config.labels.clone(),
            },
        );
        Ok(id)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("stop_sandbox {id}"))?;
        let ids: Vec<String> = self
            .lock()
            .containers
            .values()
            .filter(|(c, _)| c.sandbox_id == id)
            .map(|(c, _)| c.id.clone())
            .collect();
        for c in ids {
            self.exit(&c, 137, "Error");
        }
        if let Some(sb) = self.lock().sandboxes.get_mut(id) {
            sb.ready = false;
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("remove_sandbox {id}"))?;
        let mut s = self.lock();
        s.sandboxes.remove(id);
        s.containers.retain(|_, (c, _)| c.sandbox_id != id);
        Ok(())
    }

    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        self.lock()
            .sandboxes
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        self.call("list_sandboxes".into())?;
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox: &SandboxConfig,
    ) -> Result<String, RuntimeError> {
        self.call(format!("create {}#{}", config.name, config.attempt))?;
        let mut s = self.lock();
        s.next += 1;
        let id = format!("c{}", s.next);
        let info = ContainerInfo {
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            name: config.name.clone(),
            attempt: config.attempt,
            image_id: Some(format!("{}@sha256:1", config.image_ref)),
            state: ContainerState::Created,
            labels: config.labels.clone(),
        };
        s.containers
            .insert(id.clone(), (info, tokio::sync::watch::Sender::new(None)));
        s.logs.insert(id.clone(), config.log_path.clone());
        drop(s);
        create_log(&config.log_path);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("start {id}"))?;
        let slow = {
            let s = self.lock();
            let name = s.containers.get(id).map(|(c, _)| c.name.clone());
            name.and_then(|n| s.slow_starts.get(&n).copied())
        };
        if let Some(time) = slow {
            tokio::time::sleep(time).await;
        }
        let code = {
            let mut s = self.lock();
            let Some(name) = s.containers.get(id).map(|(c, _)| c.name.clone()) else {
                return Err(RuntimeError::NotFound(id.to_owned()));
            };
            let code = s
                .exits
                .get_mut(&name)
                .and_then(VecDeque::pop_front)
                .flatten();
            let log = s.logs.get(id).cloned();
            if let Some((info, _)) = s.containers.get_mut(id) {
                info.state = ContainerState::Running {
                    started_at: Timestamp::now(),
                };
                // As a CRI runtime does, the instance's log is there once it has started; it
                // says which instance it is.
                if let Some(path) = log {
                    log_started(&path, &format!("{name}#{}", info.attempt));
                }
            }
            code
        };
        if let Some(code) = code {
            let (fake, id) = (self.clone(), id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(RUN_FOR).await;
                fake.exit(&id, code, if code == 0 { "Completed" } else { "Error" });
            });
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.call(format!("stop {id} {}s", timeout.as_secs_f64().round()))?;
        let stubborn = {
            let s = self.lock();
            s.containers
                .get(id)
                .is_some_and(|(c, _)| s.stubborn.contains(&c.name))
        };
        if stubborn {
            tokio::time::sleep(timeout).await;
            self.exit(id, 137, "Error");
        } else {
            self.exit(id, 143, "Error");
        }
        Ok(())
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("reopen_log {id}"))?;
        let path = self.lock().logs.get(id).cloned();
        if let Some(path) = path {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call(format!("remove {id}"))?;
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.lock()
            .containers
            .get(id)
            .map(|(c, _)| c.clone())
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    async fn list_containers(
        &self,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|(c, _)| sandbox_id.is_none_or(|s| c.sandbox_id == s))
            .map(|(c, _)| c.clone())
            .collect())
    }

    async fn wait_container(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut rx = self
            .lock()
            .containers
            .get(id)
            .map(|(_, tx)| tx.subscribe())
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RuntimeError::NotFound(id.to_owned()))?;
        exit.clone()
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    async fn exec_sync(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        self.call(format!("exec {id} {}", command.join(" ")))?;
        let mut s = self.lock();
        let name = s
            .containers
            .get(id)
            .map(|(c, _)| c.name.clone())
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let code = s
            .exec_codes
            .get_mut(&name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(0);
        Ok(ExecResult {
            exit_code: code,
            stdout: Vec::new(),
            stderr: if code == 0 {
                Vec::new()
            } else {
                b"not yet".to_vec()
            },
        })
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        if !self.lock().containers.contains_key(id) {
            return Err(RuntimeError::NotFound(id.to_owned()));
        }
        Ok(FAKE_STATS)
    }

    /// Port 7 echoes until the client half-closes, then closes; port 9 says `bye\n` and
    /// half-closes at once, then reads until the client half-closes; port 13 neither reads nor
    /// writes nor closes; port 19 writes 1 KiB chunks for as long as they are taken while it
    /// reads until the client half-closes. What reaches the pod is kept ([`Fake::received`]),
    /// and what it writes counted ([`Fake::written`]). Nothing listens on other ports.
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        streams: wedge_core::runtime::PortStreams,
    ) -> Result<(), RuntimeError> {
        self.call(format!("port_forward {sandbox_id} {port}"))?;
        if let Some(message) = self.lock().no_forwarding.clone() {
            return Err(RuntimeError::Unsupported(message));
        }
        if !self.lock().sandboxes.contains_key(sandbox_id) {
            return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
        }
        let wedge_core::runtime::PortStreams { mut input, output } = streams;
        let open = Forwarding::new(self);
        match port {
            7 => {
                while let Some(data) = input.recv().await {
                    open.received(port, &data);
                    if output.send(data).await.is_err() {
                        break;
                    }
                }
            }
            9 => {
                let _ = output.send(bytes::Bytes::from_static(b"bye\n")).await;
                drop(output);
                while let Some(data) = input.recv().await {
                    open.received(port, &data);
                }
            }
            13 => {
                let _held = (input, output);
                std::future::pending::<()>().await;
            }
            19 => {
                let writing = async {
                    while output
                        .send(bytes::Bytes::from(vec![b'x'; 1024]))
                        .await
                        .is_ok()
                    {
                        open.wrote(port, 1024);
                    }
                };
                let reading = async {
                    while let Some(data) = input.recv().await {
                        open.received(port, &data);
                    }
                };
                // The pod closes once the client has: its writing ends with it.
                tokio::select! {
                    () = writing => {}
                    () = reading => {}
                }
            }
            _ => {
                return Err(RuntimeError::Failed(format!(
                    "dial tcp4 127.0.0.1:{port}: connect: connection refused"
                )));
            }
        }
        Ok(())
    }

    /// `cat` copies stdin to stdout until its end; `echo ARGS` prints them (on stderr as
    /// well, as `err:`); `exit N` exits N.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        mut streams: wedge_core::runtime::ExecStreams,
    ) -> Result<i32, RuntimeError> {
        self.call(format!("exec {id} {}", command.join(" ")))?;
        let out = |text: String| bytes::Bytes::from(text);
        match command.first().map(String::as_str) {
            Some("cat") => {
                if let (Some(stdin), Some(stdout)) = (&mut streams.stdin, &streams.stdout) {
                    while let Some(data) = stdin.recv().await {
                        let _ = stdout.send(data).await;
                    }
                }
                Ok(0)
            }
            Some("echo") => {
                let words = command[1..].join(" ");
                if let Some(stdout) = &streams.stdout {
                    let _ = stdout.send(out(format!("{words}\n"))).await;
                }
                if let Some(stderr) = &streams.stderr {
                    let _ = stderr.send(out(format!("err: {words}\n"))).await;
                }
                Ok(0)
            }
            Some("exit") => Ok(command.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
            _ => Err(RuntimeError::Failed(format!(
                "exec: {:?}: executable file not found",
                command.first()
            ))),
        }
    }
}

/// Counts a forwarded connection as open while it lives (its future may be dropped anywhere).
struct Forwarding(Fake);

impl Forwarding {
    fn new(fake: &Fake) -> Self {
        fake.lock().forwarding += 1;
        Self(fake.clone())
    }

    fn received(&self, port: u16, data: &[u8]) {
        self.0
            .lock()
            .received
            .entry(port)
            .or_default()
            .extend_from_slice(data);
    }

    fn wrote(&self, port: u16, length: usize) {
        *self.0.lock().written.entry(port).or_default() += length;
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.lock().forwarding -= 1;
    }
}

/// Creates an instance's empty log file, as a runtime creates it with the instance (same
/// blocking and best effort as [`log_started`]).
fn create_log(path: &std::path::Path) {
    let _ = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        });
}

/// Appends a record saying `instance` started to the log at `path` (blocking, but a few bytes to
/// a temp dir). A test whose pods live nowhere writable gets no log, which only the log tests read.
fn log_started(path: &std::path::Path, instance: &str) {
    use std::io::Write as _;
    let mut record = Vec::new();
    wedge_core::crilog::format_record(
        &mut record,
        Timestamp::now(),
        wedge_core::crilog::Stream::Stdout,
        wedge_core::crilog::Tag::Full,
        format!("{instance} started").as_bytes(),
    );
    create_log(path);
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&record));
}
