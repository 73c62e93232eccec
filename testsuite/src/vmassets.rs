//! What the real-VM tests boot and where they push it: Debian's cloud kernel, a busybox
//! initramfs written here (newc cpio), an Imagefile build context, and Debian's
//! `docker-registry` on a loopback port.
//!
//! The guest's `/init` prints [`MARKER`] with its uptime on the serial console, echoes console
//! input back as `GUEST-ECHO:<line>`, and stays up, or powers itself off after a few seconds
//! when the kernel command line says `tugboat_test=poweroff`, or panics (with the pvpanic
//! driver loaded, so QEMU hears of it) on `tugboat_test=panic`.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the guest prints once userspace runs.
pub const MARKER: &str = "TUGBOAT-GUEST-MARKER";

/// Missing test dependencies or failed setup steps, with what to install.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// A package the tests need is not installed.
    #[error("{what} not found ({hint})")]
    Missing {
        /// What is missing.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A setup step failed.
    #[error("{0}")]
    Setup(String),
}

type Result<T> = std::result::Result<T, AssetError>;

fn setup(what: &str) -> impl Fn(std::io::Error) -> AssetError + '_ {
    move |e| AssetError::Setup(format!("{what}: {e}"))
}

/// The newest `/boot/vmlinuz-*-cloud-amd64` (Debian package `linux-image-cloud-amd64`).
pub fn cloud_kernel() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(setup("listing /boot"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| AssetError::Missing {
        what: "/boot/vmlinuz-*-cloud-amd64".into(),
        hint: "apt-get install -y linux-image-cloud-amd64 (scripts/test.sh does)".into(),
    })
}

/// A statically linked busybox (Debian package `busybox-static`).
pub fn static_busybox() -> Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = PathBuf::from(p);
        if let Ok(bytes) = std::fs::read(&path) {
            // A dynamic binary names its interpreter in a PT_INTERP segment; a static one does not.
            let dynamic = bytes.windows(16).any(|w| w == b"/lib64/ld-linux-");
            if !dynamic {
                return Ok(path);
            }
        }
    }
    Err(AssetError::Missing {
        what: "a static busybox".into(),
        hint: "apt-get install -y busybox-static (scripts/test.sh does)".into(),
    })
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox --install -s /bin
echo "TUGBOAT-GUEST-MARKER up $(cut -d' ' -f1 /proc/uptime) cmdline: $(cat /proc/cmdline)"
# The pvpanic driver (modules in Debian's cloud kernel) tells QEMU when the kernel panics.
insmod /lib/pvpanic.ko 2>/dev/null
insmod /lib/pvpanic-mmio.ko 2>/dev/null
if grep -q tugboat_test=panic /proc/cmdline; then
  sleep 3
  echo "TUGBOAT-GUEST panicking"
  echo c > /proc/sysrq-trigger
fi
if grep -q tugboat_test=poweroff /proc/cmdline; then
  sleep 3
  echo "TUGBOAT-GUEST powering off"
  poweroff -f
fi
while IFS= read -r line; do
  echo "GUEST-ECHO:$line"
done
while true; do sleep 3600; done
"#;

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The cloud kernel's pvpanic modules (`pvpanic.ko`, `pvpanic-mmio.ko`), which the package
/// installs under `/lib/modules/<release>/`.
fn pvpanic_modules() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let kernel = cloud_kernel()?;
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| AssetError::Setup(format!("kernel name {}", kernel.display())))?
        .to_string();
    let dir = PathBuf::from(format!(
        "/lib/modules/{release}/kernel/drivers/misc/pvpanic"
    ));
    ["pvpanic.ko", "pvpanic-mmio.ko"]
        .into_iter()
        .map(|m| {
            std::fs::read(dir.join(m))
                .map(|b| (m, b))
                .map_err(|e| AssetError::Missing {
                    what: format!("{} ({e})", dir.join(m).display()),
                    hint: "apt-get install -y linux-image-cloud-amd64 (scripts/test.sh does)"
                        .into(),
                })
        })
        .collect()
}

/// A newc cpio initramfs with busybox and the test `/init`.
pub fn initramfs() -> Result<Vec<u8>> {
    let busybox = std::fs::read(static_busybox()?).map_err(setup("reading busybox"))?;
    let mut out = Vec::with_capacity(busybox.len() + 4096);
    let mut ino = 1;
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio_entry(&mut out, ino, dir, 0o040_755, &[]);
        ino += 1;
    }
    cpio_entry(&mut out, ino, "init", 0o100_755, INIT.as_bytes());
    cpio_entry(&mut out, ino + 1, "bin/busybox", 0o100_755, &busybox);
    ino += 2;
    cpio_entry(&mut out, ino, "lib", 0o040_755, &[]);
    ino += 1;
    for (name, module) in pvpanic_modules()? {
        cpio_entry(&mut out, ino, &format!("lib/{name}"), 0o100_644, &module);
        ino += 1;
    }
    cpio_entry(&mut out, ino, "TRAILER!!!", 0, &[]);
    Ok(out)
}

/// Writes an Imagefile build context into `dir`: the cloud kernel, the initramfs, a small empty
/// qcow2 root disk and an Imagefile whose kernel command line carries `extra_cmdline`.
pub fn build_context(dir: &Path, extra_cmdline: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(setup("creating the build context"))?;
    std::fs::copy(cloud_kernel()?, dir.join("vmlinuz")).map_err(setup("copying the kernel"))?;
    std::fs::write(dir.join("initrd.img"), initramfs()?).map_err(setup("writing the initramfs"))?;
    let disk = dir.join("disk.qcow2");
    if !disk.exists() {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M")
            .output()
            .map_err(|e| AssetError::Missing {
                what: format!("qemu-img ({e})"),
                hint: "apt-get install -y qemu-utils".into(),
            })?;
        if !out.status.success() {
            return Err(AssetError::Setup(format!(
                "qemu-img create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let imagefile = dir.join("Imagefile");
    let mut f = std::fs::File::create(&imagefile).map_err(setup("writing the Imagefile"))?;
    writeln!(
        f,
        "# The Tugboat test guest: Debian's cloud kernel and a busybox initramfs.\n\
         FROM disk.qcow2\n\
         FORMAT qcow2\n\
         ARCH x86_64\n\
         KERNEL vmlinuz\n\
         INITRD initrd.img\n\
         CMDLINE console=ttyS0 panic=-1 \\\n  quiet {extra_cmdline}"
    )
    .map_err(setup("writing the Imagefile"))?;
    Ok(imagefile)
}

/// Debian's `docker-registry` (distribution 2.8) serving plain HTTP on a loopback port.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry with its storage in a temporary directory and waits until `/v2/`
    /// answers.
    pub fn start() -> Result<Self> {
        let bin = Path::new("/usr/bin/docker-registry");
        if !bin.is_file() {
            return Err(AssetError::Missing {
                what: bin.display().to_string(),
                hint: "apt-get install -y docker-registry (scripts/test.sh does)".into(),
            });
        }
        let dir = tempfile::tempdir().map_err(setup("registry dir"))?;
        let port = crate::harness::free_ports(1)
            .map_err(|e| AssetError::Setup(format!("free port: {e}")))?[0];
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .map_err(setup("registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(setup("registry log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(setup("starting docker-registry"))?;
        let reg = Self {
            child,
            host,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(&reg.host).is_ok() {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(AssetError::Setup(format!(
            "docker-registry did not listen on {} within 20 s",
            reg.host
        )))
    }

    /// Stops the registry (tests of air-gapped loading prove nothing reaches it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills every QEMU whose command line mentions `dir` (VMs outlive `tugboatd` by design, so a
/// test cleans up its own).
pub fn kill_vms_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("qemu-system") && text.contains(&needle) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}
