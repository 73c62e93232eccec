//! Choosing the accelerator: `kvm` when it really works, `tcg` otherwise.
//!
//! A `/dev/kvm` that opens is not proof that KVM runs guests: under some nested hypervisors
//! KVM starts a vCPU but reports a CPUID without baseline x86-64 features, and real kernels
//! then hang or QEMU aborts setting MSRs. The probe therefore boots a tiny multiboot guest
//! (through the firmware, into protected mode) that writes to QEMU's `isa-debug-exit` port, and
//! also rejects a KVM for which QEMU warns that the host lacks requested CPU features.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An accelerator QEMU can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the operator asked for (`--accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Probe KVM; fall back to TCG.
    #[default]
    Auto,
    /// Always KVM (starting VMs fails if it does not work).
    Kvm,
    /// Always TCG.
    Tcg,
}

/// The probe's verdict, cached in the data directory per boot of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccelProbe {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why (shown in `Node.status` and logs).
    pub reason: String,
    /// Host boot id the verdict belongs to (a reboot or a new kernel module re-probes).
    pub boot_id: String,
    /// The QEMU binary probed.
    pub qemu: PathBuf,
}

/// Exit status QEMU reports when the probe guest writes `0x21` to `isa-debug-exit`
/// (`(value << 1) | 1`).
const PROBE_EXIT: i32 = (0x21 << 1) | 1;

/// A multiboot image (loaded at 1 MiB, entered in 32-bit protected mode after the firmware ran)
/// whose code writes `0x21` to port `0xf4` and halts.
fn probe_image() -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    const MAGIC: u32 = 0x1BAD_B002;
    // Bit 16: the header carries load addresses, so QEMU loads this flat binary as is.
    const FLAGS: u32 = 0x0001_0000;
    let code: [u8; 7] = [0xB0, 0x21, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE];
    let header_len = 32u32;
    let end = LOAD + header_len + code.len() as u32;
    let words = [
        MAGIC,
        FLAGS,
        0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS)),
        LOAD,
        LOAD,
        end,
        end,
        LOAD + header_len,
    ];
    let mut out = Vec::with_capacity(header_len as usize + code.len());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&code);
    out
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boots the probe guest under `accel`; `Ok(())` when it reached the exit port cleanly.
async fn run_probe(qemu: &Path, image: &Path, accel: Accel) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        &format!("q35,accel={}", accel.as_str()),
        "-m",
        "32",
        "-kernel",
    ])
    .arg(image)
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", qemu.display()))?;
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .map_err(|_| "the probe guest did not finish within 20 s".to_string())?
        .map_err(|e| format!("waiting for the probe: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(PROBE_EXIT) {
        return Err(format!(
            "probe guest exited with {} ({})",
            out.status,
            stderr.trim()
        ));
    }
    if let Some(line) = stderr
        .lines()
        .find(|l| l.contains("host doesn't support requested feature"))
    {
        return Err(format!(
            "KVM lacks baseline CPU features, guests would crash: {}",
            line.trim()
        ));
    }
    Ok(())
}

/// Decides the accelerator: the cached verdict for this boot if there is one, else a probe.
pub async fn detect(qemu: &Path, choice: AccelChoice, cache_dir: &Path) -> AccelProbe {
    let boot = boot_id();
    let forced = |accel, reason: &str| AccelProbe {
        accel,
        reason: reason.to_string(),
        boot_id: boot.clone(),
        qemu: qemu.to_path_buf(),
    };
    match choice {
        AccelChoice::Kvm => return forced(Accel::Kvm, "forced by --accel kvm"),
        AccelChoice::Tcg => return forced(Accel::Tcg, "forced by --accel tcg"),
        AccelChoice::Auto => {}
    }
    let cache = cache_dir.join("accel.json");
    if let Ok(bytes) = std::fs::read(&cache) {
        if let Ok(p) = serde_json::from_slice::<AccelProbe>(&bytes) {
            if p.boot_id == boot && p.qemu == qemu {
                return p;
            }
        }
    }
    let verdict = probe(qemu, cache_dir).await;
    let probe = AccelProbe {
        accel: verdict.0,
        reason: verdict.1,
        boot_id: boot,
        qemu: qemu.to_path_buf(),
    };
    if let Ok(json) = serde_json::to_vec_pretty(&probe) {
        let tmp = cache.with_extension("json.tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &cache));
        if let Err(e) = written {
            tracing::warn!(path = %cache.display(), error = %e, "caching the accelerator probe");
        }
    }
    probe
}

async fn probe(qemu: &Path, work_dir: &Path) -> (Accel, String) {
    let kvm = Path::new("/dev/kvm");
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        return (Accel::Tcg, format!("/dev/kvm unusable: {e}"));
    }
    let image = work_dir.join("accel-probe.bin");
    if let Err(e) = std::fs::write(&image, probe_image()) {
        return (Accel::Tcg, format!("writing the probe image: {e}"));
    }
    let result = run_probe(qemu, &image, Accel::Kvm).await;
    let _ = std::fs::remove_file(&image);
    match result {
        Ok(()) => (Accel::Kvm, "KVM probe guest ran".into()),
        Err(e) => {
            tracing::warn!(reason = %e, "KVM does not work here; using TCG (software emulation)");
            (Accel::Tcg, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_image_is_a_valid_multiboot_header() {
        let img = probe_image();
        let word = |i: usize| u32::from_le_bytes([img[i], img[i + 1], img[i + 2], img[i + 3]]);
        assert_eq!(word(0), 0x1BAD_B002);
        assert_eq!(word(0).wrapping_add(word(4)).wrapping_add(word(8)), 0);
        assert_eq!(word(20) as usize - 0x10_0000, img.len());
    }

    #[tokio::test]
    async fn forced_choices_skip_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let p = detect(Path::new("/nonexistent/qemu"), AccelChoice::Tcg, dir.path()).await;
        assert_eq!(p.accel, Accel::Tcg);
        assert!(!dir.path().join("accel.json").exists());
    }
}
