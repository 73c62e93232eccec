//! `vmbench`: what Tugboat adds to running a VM, measured beside bare QEMU in the same run.
//!
//! 1. Boot to the guest's marker: `kubectl apply` of a Ship until the marker is in its serial
//!    log, against a bare `qemu-system-x86_64` booting the same kernel and initramfs with the
//!    same machine, accelerator and memory until the marker is on its stdout. Medians of
//!    `--runs` each, interleaved.
//! 2. Memory per VM: `tugboatd`'s RSS with `--vms` Ships running minus its RSS before them,
//!    per VM, beside one QEMU's own RSS.
//! 3. Pull throughput of a `--pull-mib` image (random bytes, so gzip cannot shrink it) from
//!    Debian's docker-registry on loopback: `tugboat pull` (download, digest check, gunzip to
//!    the cache) against `skopeo copy` to a `dir:` (download and digest check only).
//!
//! The `tugboatd`/`tugboat` binaries are `$TUGBOATD_BIN` (and the `tugboat` beside it), else
//! `target/release/`.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tugboat_testsuite::harness::tugboat_cli_bin;
use tugboat_testsuite::kube::{wait_api_ready, Kubectl};
use tugboat_testsuite::procstat;
use tugboat_testsuite::vmassets::{self, Registry, MARKER};
use tugboat_testsuite::{TugboatNode, TugboatOptions};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(name = "vmbench", about = "Tugboat's VM overhead against bare QEMU")]
struct Cli {
    /// Boots measured per side.
    #[arg(long, env = "VMBENCH_RUNS", default_value_t = 5)]
    runs: usize,
    /// VMs running at once for the memory measurement.
    #[arg(long, env = "VMBENCH_VMS", default_value_t = 4)]
    vms: usize,
    /// Size of the image pulled for the throughput measurement, in MiB.
    #[arg(long, env = "VMBENCH_PULL_MIB", default_value_t = 1024)]
    pull_mib: u64,
    /// Guest memory (MiB) on both sides.
    #[arg(long, default_value_t = 192)]
    memory_mib: u64,
    /// Write the docs/benchmarks.md section (Markdown) here.
    #[arg(long, env = "VMBENCH_MARKDOWN_OUT")]
    markdown_out: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn run(cmd: &mut Command) -> Res<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Boots the guest with a bare QEMU command; seconds until the marker line on stdout.
fn bare_boot(kernel: &Path, initrd: &Path, memory_mib: u64) -> Res<f64> {
    let qemu = tugboat_qemu::runtime::find_on_path("qemu-system-x86_64")
        .ok_or("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m"])
        .arg(format!("{memory_mib}M"))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-serial",
            "stdio",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("bare qemu: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut found = None;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = line.map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&line).contains(MARKER) {
            found = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    found.ok_or_else(|| "bare qemu exited without the marker".into())
}

/// Boots the guest with Tugboat's own QEMU command line (taken from a VM it ran), moved to
/// `dir` and not daemonized; seconds until the marker is in the console log. This isolates
/// what orchestration adds from what the device set costs the guest.
fn same_cmdline_boot(args: &[String], ship_dir: &Path, dir: &Path) -> Res<f64> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let overlay = ship_dir.join("root.qcow2");
    if overlay.exists() {
        std::fs::copy(&overlay, dir.join("root.qcow2")).map_err(|e| format!("overlay: {e}"))?;
    }
    let from = ship_dir.to_string_lossy().into_owned();
    let to = dir.to_string_lossy().into_owned();
    let args: Vec<String> = args
        .iter()
        .filter(|a| a.as_str() != "-daemonize")
        .map(|a| a.replace(&from, &to))
        .collect();
    let (bin, rest) = args.split_first().ok_or("empty qemu command line")?;
    let log = dir.join("console.log");
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu: {e}"))?;
    let result = loop {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains(MARKER)) {
            break Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(120) || child.try_wait().ok().flatten().is_some() {
            break Err("qemu with tugboat's command line gave no marker".to_string());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn ship_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Ship\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  image: {image}\n  shipClass: bench\n  terminationGracePeriodSeconds: 0\n"
    )
}

/// Applies a Ship and returns seconds until the marker is in its serial log, and its uid.
/// Also prints when `kubectl apply` returned and when QEMU's pidfile appeared.
fn tugboat_boot(k: &Kubectl, data: &Path, name: &str, image: &str) -> Res<(f64, String)> {
    let start = Instant::now();
    let out = k
        .ok_stdin(&["apply", "-o", "json", "-f", "-"], &ship_yaml(name, image))
        .map_err(|e| e.to_string())?;
    let applied = start.elapsed().as_secs_f64();
    let mut launched = None;
    let obj: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .ok_or("applied Ship has no uid")?
        .to_string();
    let log = data.join("ships").join(&uid).join("console.log");
    let pidfile = data.join("ships").join(&uid).join("qemu.pid");
    loop {
        if launched.is_none() && pidfile.exists() {
            launched = Some(start.elapsed().as_secs_f64());
        }
        if let Ok(text) = std::fs::read_to_string(&log) {
            if text.contains(MARKER) {
                let done = start.elapsed().as_secs_f64();
                eprintln!(
                    "vmbench: {name}: kubectl apply returned {applied:.3} s, qemu daemonized {:.3} s, marker {done:.3} s",
                    launched.unwrap_or(f64::NAN)
                );
                return Ok((done, uid));
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("no marker from {name} within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn delete_ship(k: &Kubectl, name: &str) -> Res<()> {
    k.ok(&["delete", "ship", name, "--wait=true", "--timeout=120s"])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn rss_mib(pid: u32) -> f64 {
    procstat::status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

struct Results {
    bare: Vec<f64>,
    same: Vec<f64>,
    tugboat: Vec<f64>,
    vms: usize,
    rss_before: f64,
    rss_after: f64,
    qemu_rss: f64,
    pull_mib: u64,
    tugboat_pull: f64,
    skopeo_pull: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match bench(&cli) {
        Ok(r) => {
            let md = report(&cli, r);
            println!("{md}");
            if let Some(p) = &cli.markdown_out {
                if let Err(e) = std::fs::write(p, &md) {
                    eprintln!("vmbench: writing {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: &Cli) -> Res<Results> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let registry = Registry::start().map_err(|e| e.to_string())?;
    let cli_bin = tugboat_cli_bin().map_err(|e| e.to_string())?;
    let images = work.path().join("images");
    let ctx = work.path().join("ctx");
    let imagefile = vmassets::build_context(&ctx, "").map_err(|e| e.to_string())?;
    let reference = format!("{}/bench/marker:v1", registry.host);
    let tb = |args: &[&str]| {
        run(Command::new(&cli_bin)
            .args(args)
            .arg("--image-dir")
            .arg(&images))
    };
    eprintln!("vmbench: building and pushing {reference}");
    tb(&[
        "build",
        "-f",
        &imagefile.to_string_lossy(),
        "-t",
        &reference,
        &ctx.to_string_lossy(),
    ])?;
    tb(&["push", &reference, "--insecure-registry", &registry.host])?;

    let node = TugboatNode::start(TugboatOptions {
        name: "bench".into(),
        api: true,
        controllers: true,
        extra_args: vec![
            "--runtime".into(),
            "qemu".into(),
            "--insecure-registry".into(),
            registry.host.clone(),
            // Room for every VM of the memory measurement whatever the host has.
            "--node-cpu".into(),
            "64".into(),
            "--node-memory".into(),
            "256Gi".into(),
        ],
        ..TugboatOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let cleanup = node.data_dir().to_path_buf();
    let result = (|| -> Res<Results> {
        wait_api_ready(&node).map_err(|e| e.to_string())?;
        let k = Kubectl::admin(&node).map_err(|e| e.to_string())?;
        let class = format!(
            "apiVersion: v1\nkind: ShipClass\nmetadata:\n  name: bench\nspec:\n  cpu:\n    cores: 1\n  memory:\n    size: {}Mi\n",
            cli.memory_mib
        );
        k.ok_stdin(&["apply", "-f", "-"], &class)
            .map_err(|e| e.to_string())?;
        let pid = node.pid().ok_or("tugboatd not running")?;
        // Warm-up: the image is pulled into the node cache once, outside the timings.
        let (first, warm_uid) = tugboat_boot(&k, node.data_dir(), "warmup", &reference)?;
        eprintln!("vmbench: first boot incl. pull {first:.2} s");
        let warm_dir = node.data_dir().join("ships").join(&warm_uid);
        let qpid: u32 = std::fs::read_to_string(warm_dir.join("qemu.pid"))
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("pidfile: {e}"))?;
        let qemu_args: Vec<String> = std::fs::read(format!("/proc/{qpid}/cmdline"))
            .map_err(|e| e.to_string())?
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let same_dir = work.path().join("same-cmdline");
        let keep_overlay = work.path().join("overlay-copy");
        std::fs::create_dir_all(&keep_overlay).map_err(|e| e.to_string())?;
        std::fs::copy(warm_dir.join("root.qcow2"), keep_overlay.join("root.qcow2"))
            .map_err(|e| format!("overlay copy: {e}"))?;
        let warm_dir_s = warm_dir.clone();
        delete_ship(&k, "warmup")?;
        let same_args: Vec<String> = qemu_args
            .iter()
            .map(|a| {
                a.replace(
                    &*warm_dir_s.to_string_lossy(),
                    &keep_overlay.to_string_lossy(),
                )
            })
            .collect();
        let kernel = ctx.join("vmlinuz");
        let initrd = ctx.join("initrd.img");
        let (mut bare, mut tugboat, mut same) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..cli.runs {
            let b = bare_boot(&kernel, &initrd, cli.memory_mib)?;
            let c = same_cmdline_boot(&same_args, &keep_overlay, &same_dir)?;
            let name = format!("boot-{i}");
            let (t, _) = tugboat_boot(&k, node.data_dir(), &name, &reference)?;
            eprintln!("vmbench: run {i}: bare {b:.3} s, same cmdline {c:.3} s, tugboat {t:.3} s");
            bare.push(b);
            same.push(c);
            tugboat.push(t);
            delete_ship(&k, &name)?;
        }
        std::thread::sleep(Duration::from_secs(3));
        let rss_before = rss_mib(pid);
        let mut qemu_rss = 0.0;
        for i in 0..cli.vms {
            let (_, uid) = tugboat_boot(&k, node.data_dir(), &format!("mem-{i}"), &reference)?;
            let qpid: u32 =
                std::fs::read_to_string(node.data_dir().join("ships").join(&uid).join("qemu.pid"))
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse()
                    .map_err(|e| format!("pidfile: {e}"))?;
            qemu_rss = rss_mib(qpid);
        }
        std::thread::sleep(Duration::from_secs(5));
        let rss_after = rss_mib(pid);
        for i in 0..cli.vms {
            delete_ship(&k, &format!("mem-{i}"))?;
        }

        // Pull throughput.
        let big_ctx = work.path().join("big");
        std::fs::create_dir_all(&big_ctx).map_err(|e| e.to_string())?;
        let disk = big_ctx.join("disk.raw");
        {
            let mut f = std::fs::File::create(&disk).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..cli.pull_mib {
                rand::Rng::fill(&mut rand::rng(), &mut buf[..]);
                f.write_all(&buf).map_err(|e| e.to_string())?;
            }
        }
        std::fs::write(big_ctx.join("Imagefile"), "FROM disk.raw\nFORMAT raw\n")
            .map_err(|e| e.to_string())?;
        let big_ref = format!("{}/bench/big:v1", registry.host);
        eprintln!("vmbench: building and pushing a {} MiB image", cli.pull_mib);
        tb(&["build", "-t", &big_ref, &big_ctx.to_string_lossy()])?;
        tb(&["push", &big_ref, "--insecure-registry", &registry.host])?;
        let _ = std::fs::remove_file(&disk);
        let pulled = work.path().join("pulled");
        let t = Instant::now();
        run(Command::new(&cli_bin)
            .args([
                "pull",
                &big_ref,
                "--insecure-registry",
                &registry.host,
                "--image-dir",
            ])
            .arg(&pulled))?;
        let tugboat_pull = t.elapsed().as_secs_f64();
        let sk_dir = work.path().join("skopeo");
        let t = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{big_ref}"))
            .arg(format!("dir:{}", sk_dir.display())))?;
        let skopeo_pull = t.elapsed().as_secs_f64();
        Ok(Results {
            bare,
            same,
            tugboat,
            vms: cli.vms,
            rss_before,
            rss_after,
            qemu_rss,
            pull_mib: cli.pull_mib,
            tugboat_pull,
            skopeo_pull,
        })
    })();
    drop(node);
    vmassets::kill_vms_under(&cleanup);
    result
}

fn report(cli: &Cli, mut r: Results) -> String {
    let bare = median(&mut r.bare);
    let same = median(&mut r.same);
    let tb = median(&mut r.tugboat);
    let overhead = tb - bare;
    let orchestration = tb - same;
    let per_vm = (r.rss_after - r.rss_before) / r.vms as f64;
    let mut md = String::new();
    md.push_str("| measure | Tugboat | bare QEMU / skopeo | ratio |\n|---|---|---|---|\n");
    md.push_str(&format!(
        "| apply → guest marker, median of {} (s) | {tb:.3} | {bare:.3} | {:.2}× (overhead {:.0} ms, {:.1}%) |\n",
        cli.runs,
        tb / bare,
        overhead * 1000.0,
        overhead / bare * 100.0
    ));
    md.push_str(&format!(
        "| apply → guest marker vs QEMU with Tugboat's own command line, not daemonized (s) | {tb:.3} | {same:.3} | {:.2}× (orchestration {:.0} ms, {:.1}%) |\n",
        tb / same,
        orchestration * 1000.0,
        orchestration / same * 100.0
    ));
    md.push_str(&format!(
        "| tugboatd RSS added per running VM (MiB), {} VMs | {per_vm:.2} | QEMU's own RSS {:.0} | {:.3} |\n",
        r.vms,
        r.qemu_rss,
        per_vm / r.qemu_rss
    ));
    let tp = r.pull_mib as f64 / r.tugboat_pull;
    let sp = r.pull_mib as f64 / r.skopeo_pull;
    md.push_str(&format!(
        "| pull of a {} MiB image (MiB/s) | {tp:.0} ({:.1} s) | {sp:.0} ({:.1} s) | {:.2}× |\n",
        r.pull_mib,
        r.tugboat_pull,
        r.skopeo_pull,
        tp / sp
    ));
    md.push_str(&format!(
        "\ntugboatd RSS {:.1} MiB before the VMs, {:.1} MiB with {} running.\n",
        r.rss_before, r.rss_after, r.vms
    ));
    md
}
