//! QMP and guest-agent clients over the `qapi` crate (async tokio).
//!
//! One QMP connection per VM stays open while `tugboatd` runs: commands go through its
//! [`QapiService`] and events arrive on a channel. QEMU's QMP socket takes one client at a
//! time, so a restarted `tugboatd` simply connects again.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiService, QgaStreamTokio, QmpStreamTokio};
use qapi::{qga, qmp};
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use tugboat_nodeagent::GuestInfo;

/// Errors talking QMP or QGA.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed or the connection broke.
    #[error("{command}: {message}")]
    Command {
        /// Command name.
        command: &'static str,
        /// QEMU's error or the I/O error.
        message: String,
    },
    /// No answer in time.
    #[error("{0}: no answer in time")]
    Timeout(&'static str),
}

/// An event of the VM, simplified from QMP's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// QEMU is shutting down; `guest` tells whether the guest asked, `reason` QEMU's cause.
    Shutdown {
        /// Initiated by the guest.
        guest: bool,
        /// `ShutdownCause` (`guest-shutdown`, `host-qmp-quit`, …).
        reason: String,
    },
    /// The guest rebooted.
    Reset,
    /// Execution paused.
    Stop,
    /// Execution resumed.
    Resume,
    /// The guest kernel panicked (pvpanic).
    Panicked,
    /// An ACPI power-button press was sent.
    Powerdown,
}

type QmpWriter = QmpStreamTokio<WriteHalf<UnixStream>>;
type QgaWriter = QgaStreamTokio<WriteHalf<UnixStream>>;

/// A connected QMP client.
pub struct Qmp {
    service: QapiService<QmpWriter>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Qmp")
    }
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn simplify(event: qmp::Event) -> Option<VmEvent> {
    Some(match event {
        qmp::Event::SHUTDOWN { data, .. } => VmEvent::Shutdown {
            guest: data.guest,
            reason: enum_name(&data.reason),
        },
        qmp::Event::RESET { .. } => VmEvent::Reset,
        qmp::Event::STOP { .. } => VmEvent::Stop,
        qmp::Event::RESUME { .. } => VmEvent::Resume,
        qmp::Event::GUEST_PANICKED { .. } => VmEvent::Panicked,
        qmp::Event::POWERDOWN { .. } => VmEvent::Powerdown,
        _ => return None,
    })
}

impl Qmp {
    /// Connects and negotiates capabilities; events go to the returned receiver, which closes
    /// when the connection does (QEMU exited or the socket broke).
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Self, mpsc::Receiver<VmEvent>), QmpError> {
        let connect = async {
            let negotiation = QmpStreamTokio::open_uds(path).await?;
            negotiation.negotiate().await
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| QmpError::Timeout("qmp_capabilities"))?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (service, mut events) = stream.into_parts();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // Polling the event stream also delivers command responses to the service.
            while let Some(item) = events.next().await {
                match item {
                    Ok(ev) => {
                        if let Some(ev) = simplify(ev) {
                            if tx.send(ev).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "qmp stream ended");
                        break;
                    }
                }
            }
        });
        Ok((Self { service }, rx))
    }

    async fn run<C>(&self, command: C, timeout: Duration) -> Result<C::Ok, QmpError>
    where
        C: qapi::Command + qmp::QmpCommand,
    {
        let name = C::NAME;
        tokio::time::timeout(timeout, self.service.execute(command))
            .await
            .map_err(|_| QmpError::Timeout(name))?
            .map_err(|e| QmpError::Command {
                command: name,
                message: e.to_string(),
            })
    }

    /// `query-status`: QEMU's run state name (`running`, `paused`, `shutdown`, …).
    pub async fn status(&self) -> Result<String, QmpError> {
        let s = self
            .run(qmp::query_status {}, Duration::from_secs(5))
            .await?;
        Ok(enum_name(&s.status))
    }

    /// `system_powerdown`: presses the ACPI power button (the guest decides what to do).
    pub async fn powerdown(&self) -> Result<(), QmpError> {
        self.run(qmp::system_powerdown {}, Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// `system_reset`: a hard reset of the guest.
    pub async fn reset(&self) -> Result<(), QmpError> {
        self.run(qmp::system_reset {}, Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// `stop`: pauses the vCPUs.
    pub async fn pause(&self) -> Result<(), QmpError> {
        self.run(qmp::stop {}, Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// `cont`: resumes the vCPUs.
    pub async fn resume(&self) -> Result<(), QmpError> {
        self.run(qmp::cont {}, Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// `quit`: ends QEMU at once. The connection usually closes before an answer arrives, so
    /// an I/O error after sending counts as done.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.run(qmp::quit {}, Duration::from_secs(5)).await {
            Ok(_) | Err(QmpError::Command { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Asks qemu-guest-agent (if one answers within `timeout`) for OS facts and IP addresses.
pub async fn guest_info(
    path: &Path,
    timeout: Duration,
) -> Result<(GuestInfo, Vec<String>), QmpError> {
    let stream = tokio::time::timeout(timeout, QgaStreamTokio::open_uds(path))
        .await
        .map_err(|_| QmpError::Timeout("connect"))?
        .map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let (service, handle): (QapiService<QgaWriter>, _) = stream.spawn_tokio();
    let result = async {
        // guest-sync flushes whatever a previous client left half-written in the channel.
        let sync_value = i32::try_from(std::process::id() & 0x7fff_ffff).unwrap_or(1);
        tokio::time::timeout(timeout, service.guest_sync(sync_value))
            .await
            .map_err(|_| QmpError::Timeout("guest-sync"))?
            .map_err(|e| QmpError::Command {
                command: "guest-sync",
                message: e.to_string(),
            })?;
        let os = tokio::time::timeout(timeout, service.execute(qga::guest_get_osinfo {}))
            .await
            .map_err(|_| QmpError::Timeout("guest-get-osinfo"))?
            .ok();
        let host = tokio::time::timeout(timeout, service.execute(qga::guest_get_host_name {}))
            .await
            .map_err(|_| QmpError::Timeout("guest-get-host-name"))?
            .ok();
        let ifaces = tokio::time::timeout(
            timeout,
            service.execute(qga::guest_network_get_interfaces {}),
        )
        .await
        .map_err(|_| QmpError::Timeout("guest-network-get-interfaces"))?
        .unwrap_or_default();
        let mut ips = Vec::new();
        for iface in ifaces {
            if iface.name == "lo" {
                continue;
            }
            for ip in iface.ip_addresses.unwrap_or_default() {
                if !ip.ip_address.starts_with("fe80") {
                    ips.push(ip.ip_address);
                }
            }
        }
        let info = GuestInfo {
            os_name: os.as_ref().and_then(|o| o.name.clone()),
            os_version: os.as_ref().and_then(|o| o.version.clone()),
            kernel_release: os.as_ref().and_then(|o| o.kernel_release.clone()),
            hostname: host.map(|h| h.host_name),
        };
        Ok((info, ips))
    }
    .await;
    drop(service);
    handle.abort();
    result
}
