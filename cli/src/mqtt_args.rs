//! Who may use an edge's MQTT bus: one definition of the flags for `edgecore` and for the local
//! edge of `wedge up`. The files are mosquitto's own formats, so that one pair serves the
//! embedded broker and a mosquitto alike.

use std::path::PathBuf;

use clap::Args;
use wedge_edge::agent::AgentConfig;
use wedge_edge::eventbus::auth::BusAuthConfig;

/// The bus's security flags.
#[derive(Args, Debug, Clone, Default)]
pub struct MqttAuthArgs {
    /// The embedded broker's users: a mosquitto `password_file` (`mosquitto_passwd` writes it).
    /// Without one, only EventBus (and anonymous clients, if allowed) can connect.
    #[arg(long, env = "WEDGE_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// What each user may publish and subscribe to: a mosquitto `acl_file` (`user`, `topic`,
    /// `pattern` lines). Without one, users may use every topic.
    #[arg(long, env = "WEDGE_MQTT_ACL_FILE")]
    pub mqtt_acl_file: Option<PathBuf>,
    /// Let clients without a login use the embedded broker (KubeEdge mappers that cannot log
    /// in), within the ACL file's rules before its first `user` line if there is one.
    #[arg(long, env = "WEDGE_MQTT_ALLOW_ANONYMOUS")]
    pub mqtt_allow_anonymous: bool,
    /// EventBus's login to an external broker (--mqtt-broker): a file holding
    /// `username:password`.
    #[arg(long, env = "WEDGE_MQTT_CREDENTIALS_FILE")]
    pub mqtt_credentials_file: Option<PathBuf>,
}

impl MqttAuthArgs {
    /// Sets these flags on an edge's config.
    pub fn apply(self, config: &mut AgentConfig) {
        config.mqtt_auth = BusAuthConfig {
            password_file: self.mqtt_password_file,
            acl_file: self.mqtt_acl_file,
            allow_anonymous: self.mqtt_allow_anonymous,
            credentials_file: self.mqtt_credentials_file,
        };
    }
}

/// The user `wedge up` makes for its embedded broker when given no password file.
pub const LOCAL_USER: &str = "wedge";

/// For `wedge up` without `--mqtt-password-file`: a password file under `dir` naming
/// [`LOCAL_USER`], whose password is kept beside it (both 0600, made once and kept). Returns
/// the password file and the password's file.
pub fn local_user(dir: &std::path::Path) -> std::io::Result<(PathBuf, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let passwd = dir.join("passwd");
    let password_path = dir.join("password");
    if passwd.exists() && password_path.exists() {
        return Ok((passwd, password_path));
    }
    std::fs::create_dir_all(dir)?;
    let password = wedge_edge::eventbus::passwords::random_password();
    let write = |path: &std::path::Path, text: String| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
            .write_all(text.as_bytes())
    };
    write(&password_path, format!("{password}\n"))?;
    write(
        &passwd,
        format!(
            "{LOCAL_USER}:{}\n",
            wedge_edge::eventbus::passwords::hash(&password)
        ),
    )?;
    Ok((passwd, password_path))
}
