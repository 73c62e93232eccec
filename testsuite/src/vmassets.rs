//! What the real-VM tests boot and where they push it: Debian's cloud kernel, a busybox
//! initramfs written here (newc cpio), an Imagefile build context, and Debian's
//! `docker-registry` on a loopback port.
//!
//! The guest's `/init` prints [`MARKER`] with its uptime on the serial console, echoes console
//! input back as `GUEST-ECHO:<line>`, and stays up, or powers itself off after a few seconds
//! when the kernel command line says `tugboat_test=poweroff`, or panics (with the pvpanic
//! driver loaded, so QEMU hears of it) on `tugboat_test=panic`.
//!
//! A second guest, built by [`guest_agent_initramfs`] / [`guest_agent_build_context`], runs
//! Debian's real `qemu-ga` (package `qemu-guest-agent`, copied in with the libraries `ldd`
//! names) on the runtime's `org.qemu.guest_agent.0` virtio-serial port, after loading the
//! cloud kernel's virtio modules and taking an address by DHCP from QEMU's user-mode network.
//! Its `/etc/os-release` and hostname are distinctive ([`QGA_OS_NAME`], [`QGA_HOSTNAME`]), so
//! a test can tell that what the Ship's status shows came from inside the guest.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the guest prints once userspace runs.
pub const MARKER: &str = "TUGBOAT-GUEST-MARKER";

/// `NAME` in the guest-agent guest's `/etc/os-release` (qemu-ga's `guest-get-osinfo` `name`).
pub const QGA_OS_NAME: &str = "Tugboat QGA Test Guest";
/// `VERSION` in the guest-agent guest's `/etc/os-release` (`guest-get-osinfo` `version`).
pub const QGA_OS_VERSION: &str = "7.3 (tugboat-qga-e2e)";
/// The hostname the guest-agent guest sets (`guest-get-host-name`).
pub const QGA_HOSTNAME: &str = "tugboat-qga-guest";
/// What the guest-agent guest prints once `qemu-ga` is started.
pub const QGA_STARTED: &str = "TUGBOAT-QGA started";
/// What the guest-agent guest prints after DHCP configured an address: this prefix, the
/// address, `/`, the prefix length.
pub const QGA_DHCP_PREFIX: &str = "TUGBOAT-QGA dhcp ";
/// Where Debian's `qemu-guest-agent` installs the agent.
pub const QEMU_GA: &str = "/usr/sbin/qemu-ga";

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
    found
        .pop()
        .ok_or_else(|| kernel_file_missing("/boot/vmlinuz-*-cloud-amd64".into()))
}

/// The release of [`cloud_kernel`] (`6.1.0-…-cloud-amd64`): what `uname -r` says in the guest.
pub fn cloud_kernel_release() -> Result<String> {
    let kernel = cloud_kernel()?;
    kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_string)
        .ok_or_else(|| AssetError::Setup(format!("kernel name {}", kernel.display())))
}

/// A file of Debian's cloud kernel package is missing.
fn kernel_file_missing(what: String) -> AssetError {
    AssetError::Missing {
        what,
        hint: "apt-get install -y linux-image-cloud-amd64 (scripts/test.sh does)".into(),
    }
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
insmod /lib/pvpanic_mmio.ko 2>/dev/null
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

/// A newc cpio initramfs with busybox, the cloud kernel's pvpanic modules and the test
/// `/init`.
pub fn initramfs() -> Result<Vec<u8>> {
    let busybox = std::fs::read(static_busybox()?).map_err(setup("reading busybox"))?;
    let mut cpio = Cpio::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(dir);
    }
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("bin/busybox", 0o755, &busybox);
    for (name, module) in modules_with_deps(PANIC_MODULES)? {
        cpio.file(&format!("lib/{name}"), 0o644, &module);
    }
    Ok(cpio.finish())
}

/// The pvpanic drivers (ISA/ACPI and PCI flavours share the `pvpanic` core), as named in
/// `modules.dep`.
const PANIC_MODULES: &[&str] = &["pvpanic_mmio"];

/// The guest-agent guest's `/init`. `@HOSTNAME@` and `@INSMOD@` (the module loads, in
/// dependency order) are filled in by [`guest_agent_initramfs`].
const QGA_INIT: &str = r#"#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /tmp /dev /run /var
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
echo "TUGBOAT-GUEST-MARKER up $(cut -d' ' -f1 /proc/uptime) cmdline: $(cat /proc/cmdline)"
hostname @HOSTNAME@
@INSMOD@
ip link set lo up
nic=""
for i in $(seq 1 100); do
  for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" != lo ] && nic=$n && break
  done
  [ -n "$nic" ] && break
  sleep 0.1
done
echo "TUGBOAT-QGA nic ${nic:-none}"
ip link set "$nic" up
udhcpc -i "$nic" -n -q -t 20 -T 1 -s /etc/udhcpc.script || echo "TUGBOAT-QGA dhcp failed"
port=""
for i in $(seq 1 100); do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  sleep 0.1
done
echo "TUGBOAT-QGA port ${port:-none}"
mkdir -p /run/qga
LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/sbin/qemu-ga -m virtio-serial -p "$port" \
  -t /run/qga -f /run/qga/qemu-ga.pid &
echo "TUGBOAT-QGA started pid $!"
while true; do sleep 3600; done
"#;

/// busybox `udhcpc`'s hook: configures the lease it got and says so on the console.
const QGA_UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    echo "TUGBOAT-QGA dhcp $ip/${mask:-24} on $interface"
    ;;
esac
exit 0
"#;

/// The kernel modules the guest-agent guest loads (virtio PCI transport, the virtio-serial
/// port qemu-ga talks on, the NIC), named as in `modules.dep`.
const QGA_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtio_net"];

/// A newc cpio archive that creates parent directories as entries are added.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
            dirs: std::collections::BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        cpio_entry(&mut self.out, self.ino, path, 0o040_755, &[]);
        self.ino += 1;
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        cpio_entry(&mut self.out, self.ino, path, 0o100_000 | mode, data);
        self.ino += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        cpio_entry(&mut self.out, self.ino, "TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Debian's `qemu-ga` (package `qemu-guest-agent`).
pub fn qemu_guest_agent() -> Result<PathBuf> {
    let path = PathBuf::from(QEMU_GA);
    if path.is_file() {
        Ok(path)
    } else {
        Err(AssetError::Missing {
            what: QEMU_GA.into(),
            hint: "apt-get install -y qemu-guest-agent (scripts/test.sh does)".into(),
        })
    }
}

/// The shared libraries and the ELF interpreter `ldd` names for `bin`, as absolute paths.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| AssetError::Missing {
            what: format!("ldd ({e})"),
            hint: "apt-get install -y libc-bin".into(),
        })?;
    if !out.status.success() {
        return Err(AssetError::Setup(format!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        // `libfoo.so.1 => /lib/…/libfoo.so.1 (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)`, or
        // the vDSO (`linux-vdso.so.1 (0x…)`), which has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or("");
        if path == "not" || line.contains("not found") {
            return Err(AssetError::Setup(format!(
                "ldd {}: a library is missing: {line}",
                bin.display()
            )));
        }
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    if !libs
        .iter()
        .any(|l| l.to_string_lossy().contains("/ld-linux"))
    {
        return Err(AssetError::Setup(format!(
            "ldd {} named no ELF interpreter: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(libs)
}

/// Reads a kernel module, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` (busybox `insmod`
/// loads plain ELF objects only).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return std::fs::read(path).map_err(|e| kernel_file_missing(format!("{name} ({e})")));
    } else if name.ends_with(".ko.xz") {
        ("xz", "xz-utils")
    } else if name.ends_with(".ko.zst") {
        ("zstd", "zstd")
    } else if name.ends_with(".ko.gz") {
        ("gzip", "gzip")
    } else {
        return Err(AssetError::Setup(format!("unknown module format: {name}")));
    };
    let out = Command::new(tool.0)
        .args(["-dc"])
        .arg(path)
        .output()
        .map_err(|e| AssetError::Missing {
            what: format!("{} ({e})", tool.0),
            hint: format!("apt-get install -y {}", tool.1),
        })?;
    if !out.status.success() {
        return Err(AssetError::Setup(format!(
            "{} -dc {name}: {}",
            tool.0,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out.stdout)
}

/// The module name of a `modules.dep` path (`kernel/…/virtio-rng.ko.xz` → `virtio_rng`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `wanted` modules of the cloud kernel and everything they depend on (from
/// `/lib/modules/<release>/modules.dep`), dependencies first: `(file name, contents)`.
fn modules_with_deps(wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let release = cloud_kernel_release()?;
    let base = PathBuf::from(format!("/lib/modules/{release}"));
    let dep_file = base.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file)
        .map_err(|e| kernel_file_missing(format!("{} ({e})", dep_file.display())))?;
    // module name → (path, dependency paths)
    let mut deps: std::collections::HashMap<String, (String, Vec<String>)> = Default::default();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module_name(path),
            (
                path.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ),
        );
    }
    fn visit(
        name: &str,
        deps: &std::collections::HashMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        dep_file: &Path,
    ) -> Result<()> {
        if order.iter().any(|p| module_name(p) == name) {
            return Ok(());
        }
        let (path, needs) = deps.get(name).ok_or_else(|| {
            AssetError::Setup(format!(
                "module {name} is not in {} (built in? then it needs no loading)",
                dep_file.display()
            ))
        })?;
        for d in needs {
            visit(&module_name(d), deps, order, dep_file)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut order = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &mut order, &dep_file)?;
    }
    order
        .into_iter()
        .map(|p| {
            let data = read_module(&base.join(&p))?;
            Ok((format!("{}.ko", module_name(&p)), data))
        })
        .collect()
}

/// A newc cpio initramfs for the guest-agent guest: busybox, Debian's `qemu-ga` with the
/// libraries and interpreter `ldd` names (at the same paths), the virtio modules with their
/// dependencies, a distinctive `/etc/os-release` and an `/init` that loads the modules, takes
/// an address by DHCP and runs `qemu-ga` on the `org.qemu.guest_agent.0` port.
pub fn guest_agent_initramfs() -> Result<Vec<u8>> {
    let busybox = std::fs::read(static_busybox()?).map_err(setup("reading busybox"))?;
    let qga = qemu_guest_agent()?;
    let mut cpio = Cpio::new();
    for dir in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "run", "var", "etc",
    ] {
        cpio.dir(dir);
    }
    cpio.file("bin/busybox", 0o755, &busybox);
    let qga_bytes = std::fs::read(&qga).map_err(setup("reading qemu-ga"))?;
    cpio.file(QEMU_GA, 0o755, &qga_bytes);
    for lib in shared_libraries(&qga)? {
        // Symlinks (the interpreter's /lib64 name) are followed: the file lands at the path
        // the loader asks for.
        let bytes = std::fs::read(&lib)
            .map_err(|e| AssetError::Setup(format!("reading {}: {e}", lib.display())))?;
        cpio.file(&lib.to_string_lossy(), 0o755, &bytes);
    }
    let mut insmod = String::new();
    for (name, data) in modules_with_deps(QGA_MODULES)? {
        cpio.file(&format!("lib/modules/{name}"), 0o644, &data);
        insmod.push_str(&format!(
            "insmod /lib/modules/{name} || echo \"TUGBOAT-QGA insmod {name} failed\"\n"
        ));
    }
    let os_release = format!(
        "NAME=\"{QGA_OS_NAME}\"\nVERSION=\"{QGA_OS_VERSION}\"\nID=tugboat-qga-test\n\
         VERSION_ID=7.3\nPRETTY_NAME=\"{QGA_OS_NAME} {QGA_OS_VERSION}\"\n"
    );
    cpio.file("etc/os-release", 0o644, os_release.as_bytes());
    cpio.file(
        "etc/hostname",
        0o644,
        format!("{QGA_HOSTNAME}\n").as_bytes(),
    );
    cpio.file("etc/udhcpc.script", 0o755, QGA_UDHCPC_SCRIPT.as_bytes());
    let init = QGA_INIT
        .replace("@HOSTNAME@", QGA_HOSTNAME)
        .replace("@INSMOD@", insmod.trim_end());
    cpio.file("init", 0o755, init.as_bytes());
    Ok(cpio.finish())
}

/// Writes an Imagefile build context into `dir`: the cloud kernel, the initramfs, a small empty
/// qcow2 root disk and an Imagefile whose kernel command line carries `extra_cmdline`.
pub fn build_context(dir: &Path, extra_cmdline: &str) -> Result<PathBuf> {
    write_context(
        dir,
        &initramfs()?,
        "The Tugboat test guest: Debian's cloud kernel and a busybox initramfs.",
        extra_cmdline,
    )
}

/// Like [`build_context`], but the guest is the one of [`guest_agent_initramfs`]: it runs
/// Debian's `qemu-ga` and takes an address by DHCP.
pub fn guest_agent_build_context(dir: &Path, extra_cmdline: &str) -> Result<PathBuf> {
    write_context(
        dir,
        &guest_agent_initramfs()?,
        "The Tugboat guest-agent test guest: Debian's cloud kernel, busybox and qemu-ga.",
        extra_cmdline,
    )
}

fn write_context(
    dir: &Path,
    initramfs: &[u8],
    description: &str,
    extra_cmdline: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(setup("creating the build context"))?;
    std::fs::copy(cloud_kernel()?, dir.join("vmlinuz")).map_err(setup("copying the kernel"))?;
    std::fs::write(dir.join("initrd.img"), initramfs).map_err(setup("writing the initramfs"))?;
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
        "# {description}\n\
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
        Self::start_inner(None)
    }

    /// Like [`Registry::start`], with htpasswd authentication: only `user`/`password` may pull
    /// or push (the bcrypt entry comes from `htpasswd` of Debian's `apache2-utils`).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Result<Self> {
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
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .map_err(|e| AssetError::Missing {
                    what: format!("htpasswd ({e})"),
                    hint: "apt-get install -y apache2-utils (scripts/test.sh does)".into(),
                })?;
            if !out.status.success() {
                return Err(AssetError::Setup(format!(
                    "htpasswd: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(setup("htpasswd file"))?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: tugboat-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(&config, yaml).map_err(setup("registry config"))?;
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
