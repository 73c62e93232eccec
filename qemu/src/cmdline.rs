//! The QEMU command line of a VM, built from a typed [`LaunchSpec`].
//!
//! Everything the guest sees is explicit (`-nodefaults -no-user-config`): machine, vCPUs and
//! memory with hotplug headroom, virtio disks and NIC, a serial console on a socket that also
//! appends to a log, the QMP socket, and a virtio-serial channel for qemu-guest-agent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tugboat_nodeagent::{CpuSpec, PortForward};

use crate::accel::Accel;

/// Errors in a VM's launch description.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    /// A size or count is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The machine model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineType {
    /// `q35` (PCIe, ACPI, hotplug): the default.
    Q35,
    /// `microvm`: virtio-mmio only, no PCI, no hotplug, fastest boot.
    Microvm,
}

impl MachineType {
    /// Parses a ShipClass `machineType` / RuntimeClass `machine` (`q35`, `pc-q35-7.2`, `microvm`).
    pub fn parse(s: &str) -> Result<Self, CmdlineError> {
        match s {
            "" | "q35" => Ok(Self::Q35),
            "microvm" => Ok(Self::Microvm),
            s if s.starts_with("pc-q35-") => Ok(Self::Q35),
            other => Err(CmdlineError::Invalid(format!(
                "unsupported machine type {other:?} (supported: q35, microvm)"
            ))),
        }
    }
}

/// One NIC: user-mode networking with its port forwards (CNI wiring replaces the backend later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Device id (`net0`).
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Host ports forwarded into the guest.
    pub forwards: Vec<PortForward>,
}

/// Everything needed to start one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// `namespace/name` (the process name and `-name`).
    pub name: String,
    /// Ship UID (SMBIOS system UUID when it is a UUID).
    pub uid: String,
    /// Accelerator.
    pub accel: Accel,
    /// Machine model.
    pub machine: MachineType,
    /// vCPU topology.
    pub cpu: CpuSpec,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Memory hotplug ceiling in bytes.
    pub max_memory_bytes: Option<u64>,
    /// The VM's directory (sockets, logs, pidfile).
    pub dir: PathBuf,
    /// Root disk (a qcow2 overlay).
    pub root_disk: Option<PathBuf>,
    /// Cloud-init `cidata` ISO.
    pub cidata: Option<PathBuf>,
    /// Kernel for direct boot.
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    pub kernel_cmdline: Option<String>,
    /// NICs.
    pub nics: Vec<Nic>,
}

/// Paths of a VM's sockets and files inside its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPaths {
    /// QMP socket.
    pub qmp: PathBuf,
    /// Serial console socket.
    pub console: PathBuf,
    /// Serial console log.
    pub console_log: PathBuf,
    /// qemu-guest-agent socket.
    pub guest_agent: PathBuf,
    /// QEMU's pidfile.
    pub pidfile: PathBuf,
}

impl VmPaths {
    /// The fixed layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            console: dir.join("console.sock"),
            console_log: dir.join("console.log"),
            guest_agent: dir.join("qga.sock"),
            pidfile: dir.join("qemu.pid"),
        }
    }
}

/// QEMU option values separate keys with commas; a literal comma is written twice.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

const MIB: u64 = 1024 * 1024;

impl LaunchSpec {
    /// The arguments after the QEMU binary (daemonized, with a pidfile).
    pub fn args(&self) -> Result<Vec<OsString>, CmdlineError> {
        let paths = VmPaths::new(&self.dir);
        let mut a: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-name".into(),
            format!("guest={},debug-threads=on", self.name.replace(',', ",,")),
            "-display".into(),
            "none".into(),
            "-msg".into(),
            "timestamp=on".into(),
            "-daemonize".into(),
            "-pidfile".into(),
            esc(&paths.pidfile),
        ];
        if is_uuid(&self.uid) {
            a.extend(["-uuid".into(), self.uid.clone()]);
        }
        let mmio = self.machine == MachineType::Microvm;
        match self.machine {
            MachineType::Q35 => a.extend([
                "-machine".into(),
                format!("q35,accel={}", self.accel.as_str()),
            ]),
            MachineType::Microvm => a.extend([
                "-machine".into(),
                format!(
                    "microvm,accel={},x-option-roms=off,isa-serial=on,rtc=on,pcie=off",
                    self.accel.as_str()
                ),
            ]),
        }
        let model = self.cpu.model.clone().unwrap_or_else(|| match self.accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "max".into(),
        });
        a.extend(["-cpu".into(), model]);
        a.extend(["-smp".into(), self.smp()?]);
        a.extend(["-m".into(), self.memory()?]);
        // A guest panic (pvpanic) ends QEMU with a failure status; the runtime sees
        // GUEST_PANICKED first and reports a crash.
        a.extend(["-action".into(), "panic=exit-failure".into()]);
        if !mmio {
            a.extend(["-device".into(), "pvpanic".into()]);
        }
        // Serial console: a socket for `tugboat console` that also appends to the log.
        a.extend([
            "-chardev".into(),
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                esc(&paths.console),
                esc(&paths.console_log)
            ),
            "-serial".into(),
            "chardev:serial0".into(),
        ]);
        a.extend([
            "-chardev".into(),
            format!("socket,id=qmp0,path={},server=on,wait=off", esc(&paths.qmp)),
            "-mon".into(),
            "chardev=qmp0,mode=control".into(),
        ]);
        let dev = |pci: &str, mmio_dev: &str| if mmio { mmio_dev } else { pci }.to_string();
        // qemu-guest-agent channel.
        a.extend([
            "-chardev".into(),
            format!(
                "socket,id=qga0,path={},server=on,wait=off",
                esc(&paths.guest_agent)
            ),
            "-device".into(),
            dev(
                "virtio-serial-pci,id=vser0",
                "virtio-serial-device,id=vser0",
            ),
            "-device".into(),
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        ]);
        a.extend([
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            format!("{},rng=rng0", dev("virtio-rng-pci", "virtio-rng-device")),
        ]);
        if let Some(root) = &self.root_disk {
            a.extend([
                "-blockdev".into(),
                format!(
                    "driver=qcow2,node-name=root,discard=unmap,file.driver=file,file.filename={}",
                    esc(root)
                ),
                "-device".into(),
                format!(
                    "{},drive=root,id=disk-root{}",
                    dev("virtio-blk-pci", "virtio-blk-device"),
                    if mmio { "" } else { ",bootindex=1" }
                ),
            ]);
        }
        if let Some(iso) = &self.cidata {
            a.extend([
                "-blockdev".into(),
                format!(
                    "driver=raw,node-name=cidata,read-only=on,file.driver=file,file.filename={}",
                    esc(iso)
                ),
                "-device".into(),
                format!(
                    "{},drive=cidata,id=disk-cidata",
                    dev("virtio-blk-pci", "virtio-blk-device")
                ),
            ]);
        }
        for nic in &self.nics {
            let mut netdev = format!("user,id={}", nic.id);
            for f in &nic.forwards {
                let proto = if f.protocol.eq_ignore_ascii_case("udp") {
                    "udp"
                } else {
                    "tcp"
                };
                netdev.push_str(&format!(
                    ",hostfwd={proto}:{}:{}-:{}",
                    f.host_ip.as_deref().unwrap_or(""),
                    f.host_port,
                    f.guest_port
                ));
            }
            a.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!(
                    "{},netdev={},mac={},id={}",
                    dev("virtio-net-pci", "virtio-net-device"),
                    nic.id,
                    nic.mac,
                    nic.id
                ),
            ]);
        }
        if let Some(kernel) = &self.kernel {
            a.extend(["-kernel".into(), kernel.to_string_lossy().into_owned()]);
            if let Some(initrd) = &self.initrd {
                a.extend(["-initrd".into(), initrd.to_string_lossy().into_owned()]);
            }
            if let Some(c) = &self.kernel_cmdline {
                a.extend(["-append".into(), c.clone()]);
            }
        }
        Ok(a.into_iter().map(OsString::from).collect())
    }

    fn smp(&self) -> Result<String, CmdlineError> {
        let sockets = self.cpu.sockets.max(1);
        let threads = self.cpu.threads.max(1);
        let cores = self.cpu.cores.max(1);
        let max_cores = self.cpu.max_cores.unwrap_or(cores);
        if max_cores < cores {
            return Err(CmdlineError::Invalid(format!(
                "cpu.maxCores {max_cores} is below cpu.cores {cores}"
            )));
        }
        let boot = sockets * cores * threads;
        let max = sockets * max_cores * threads;
        if max > 512 {
            return Err(CmdlineError::Invalid(format!(
                "{max} vCPUs is more than QEMU allows (512)"
            )));
        }
        if self.machine == MachineType::Microvm || max == boot {
            return Ok(format!(
                "cpus={boot},sockets={sockets},cores={cores},threads={threads}"
            ));
        }
        // Hotplug headroom: the topology describes the maximum, `cpus` what boots.
        Ok(format!(
            "cpus={boot},maxcpus={max},sockets={sockets},cores={max_cores},threads={threads}"
        ))
    }

    fn memory(&self) -> Result<String, CmdlineError> {
        let mib = if self.memory_bytes == 0 {
            512
        } else {
            self.memory_bytes.div_ceil(MIB)
        };
        if mib < 16 {
            return Err(CmdlineError::Invalid(format!(
                "memory {mib} MiB is too small (minimum 16 MiB)"
            )));
        }
        match self.max_memory_bytes.map(|m| m.div_ceil(MIB)) {
            Some(max) if max > mib && self.machine == MachineType::Q35 => {
                Ok(format!("size={mib}M,slots=8,maxmem={max}M"))
            }
            Some(max) if max < mib => Err(CmdlineError::Invalid(format!(
                "memory.maxSize {max} MiB is below memory.size {mib} MiB"
            ))),
            _ => Ok(format!("size={mib}M")),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            name: "default/web".into(),
            uid: "0b6a4c7e-1d2f-4e5a-9b8c-7d6e5f4a3b2c".into(),
            accel: Accel::Tcg,
            machine: MachineType::Q35,
            cpu: CpuSpec {
                cores: 2,
                max_cores: Some(4),
                ..CpuSpec::default()
            },
            memory_bytes: 1 << 30,
            max_memory_bytes: Some(4 << 30),
            dir: PathBuf::from("/var/lib/tugboat/ships/u,1"),
            root_disk: Some(PathBuf::from("/d/root.qcow2")),
            cidata: Some(PathBuf::from("/d/cidata.iso")),
            kernel: Some(PathBuf::from("/k/vmlinuz")),
            initrd: None,
            kernel_cmdline: Some("console=ttyS0".into()),
            nics: vec![Nic {
                id: "net0".into(),
                mac: "02:00:00:00:00:01".into(),
                forwards: vec![PortForward {
                    protocol: "TCP".into(),
                    host_ip: Some("127.0.0.1".into()),
                    host_port: 8080,
                    guest_port: 80,
                }],
            }],
        }
    }

    fn joined(s: &LaunchSpec) -> String {
        s.args()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn q35_with_hotplug_headroom_and_devices() {
        let a = joined(&spec());
        assert!(a.starts_with("-nodefaults -no-user-config"));
        assert!(a.contains("-machine q35,accel=tcg"));
        assert!(a.contains("-smp cpus=2,maxcpus=4,sockets=1,cores=4,threads=1"));
        assert!(a.contains("-m size=1024M,slots=8,maxmem=4096M"));
        assert!(a.contains("-cpu max"));
        assert!(a.contains("-uuid 0b6a4c7e-1d2f-4e5a-9b8c-7d6e5f4a3b2c"));
        // A comma in a path is doubled so QEMU does not read it as an option separator.
        assert!(a.contains("path=/var/lib/tugboat/ships/u,,1/console.sock"));
        assert!(a.contains("logfile=/var/lib/tugboat/ships/u,,1/console.log"));
        assert!(a.contains("virtio-blk-pci,drive=root,id=disk-root,bootindex=1"));
        assert!(a.contains("hostfwd=tcp:127.0.0.1:8080-:80"));
        assert!(a.contains("virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01"));
        assert!(a.contains("name=org.qemu.guest_agent.0"));
        assert!(a.contains("-kernel /k/vmlinuz -append console=ttyS0"));
        assert!(a.contains("-daemonize -pidfile"));
    }

    #[test]
    fn microvm_uses_mmio_devices_and_no_hotplug() {
        let mut s = spec();
        s.machine = MachineType::Microvm;
        let a = joined(&s);
        assert!(a.contains("-machine microvm,accel=tcg"));
        assert!(a.contains("virtio-blk-device,drive=root"));
        assert!(!a.contains("-pci"));
        assert!(!a.contains("maxmem"));
        assert!(a.contains("-smp cpus=2,sockets=1,cores=2,threads=1"));
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        let mut s = spec();
        s.cpu.max_cores = Some(1);
        assert!(s.args().is_err());
        let mut s = spec();
        s.max_memory_bytes = Some(1 << 20);
        assert!(s.args().is_err());
        let mut s = spec();
        s.memory_bytes = 1 << 20;
        assert!(s.args().is_err());
        assert!(MachineType::parse("i440fx").is_err());
        assert_eq!(MachineType::parse("pc-q35-7.2"), Ok(MachineType::Q35));
    }
}
