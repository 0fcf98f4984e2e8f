//! Signals for the processes tests start: `std::process::Child` can only kill.

use rustix::process::{Pid, Signal};

/// Sends SIGTERM to `pid`, as a service manager or Ctrl-C stops a process. Does nothing for a
/// pid that is not one (the process is gone).
pub fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, Signal::TERM);
    }
}
