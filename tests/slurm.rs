//! A real Slurm: a single-node cluster from Debian's packages (munge, slurmctld, slurmd, the
//! client commands), started in a temporary folder with its own ports; `examples/slurm-array.sh`
//! submitted with `sbatch` as a 2-task job array and the merge as a job that depends on it; the
//! merged store must equal an unsharded run's. Where the packages are missing or the daemons
//! cannot start (no root, a machine that forbids them), the test says so on stderr and passes
//! without running (`scripts/fetch-assets.sh` installs the packages for CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok_json, tiny_encoder};
use robust_ssl::experiment::store::Store;

/// The daemons of one test cluster; stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pid in ["slurmd.pid", "slurmctld.pid", "munged.pid"] {
            if let Ok(p) = std::fs::read_to_string(self.dir.join(pid)) {
                let _ = Command::new("kill").arg(p.trim()).status();
            }
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("{}:\n{}", path.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
}

fn ok(cmd: &mut Command) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(format!("{cmd:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// Starts munged, slurmctld and slurmd in `dir`; `Err` says why they could not run here.
fn start(dir: &Path) -> Result<Cluster, String> {
    for bin in ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo"] {
        if ok(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_err() {
            return Err(format!("no '{bin}' (Debian's munge, slurmctld, slurmd, slurm-client)"));
        }
    }
    if ok(Command::new("id").arg("-u")).as_deref() != Ok("0") {
        return Err("the single-node cluster runs its daemons as root; this test is not root".into());
    }
    let host = ok(&mut Command::new("hostname"))?;
    for sub in ["state", "spool", "log"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let key = dir.join("munge.key");
    std::fs::write(&key, (0..1024).map(|i| (i * 131 % 251) as u8 ^ (std::process::id() as u8)).collect::<Vec<u8>>())
        .map_err(|e| e.to_string())?;
    ok(Command::new("chmod").args(["400", key.to_str().unwrap()]))?;
    let socket = dir.join("munge.sock");
    let d = |p: &str| dir.join(p).display().to_string();
    let cluster = Cluster { dir: dir.to_path_buf(), conf: dir.join("slurm.conf") };
    ok(Command::new("munged").args([
        "--force",
        &format!("--socket={}", socket.display()),
        &format!("--key-file={}", key.display()),
        &format!("--log-file={}", d("log/munged.log")),
        &format!("--pid-file={}", d("munged.pid")),
        &format!("--seed-file={}", d("munge.seed")),
    ]))?;
    // Ports of this process, away from a system Slurm's 6817/6818.
    let port = 20000 + (std::process::id() % 20000) as u16 * 2;
    let conf = format!(
        "ClusterName=robustssl\nSlurmctldHost={host}\nSlurmctldPort={port}\nSlurmdPort={}\nSlurmUser=root\nSlurmdUser=root\n\
         AuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\nStateSaveLocation={}\nSlurmdSpoolDir={}\n\
         SlurmctldPidFile={}\nSlurmdPidFile={}\nSlurmctldLogFile={}\nSlurmdLogFile={}\nProctrackType=proctrack/linuxproc\n\
         TaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\nSchedulerType=sched/builtin\nSelectType=select/cons_tres\n\
         SelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\n\
         NodeName={host} CPUs=2 State=UNKNOWN\nPartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
        port + 1,
        socket.display(),
        d("state"),
        d("spool"),
        d("slurmctld.pid"),
        d("slurmd.pid"),
        d("log/slurmctld.log"),
        d("log/slurmd.log"),
    );
    std::fs::write(&cluster.conf, conf).map_err(|e| e.to_string())?;
    let conf = cluster.conf.to_str().unwrap();
    ok(Command::new("slurmctld").args(["-f", conf, "-i"]).env("SLURM_CONF", conf))?;
    ok(Command::new("slurmd").args(["-f", conf]).env("SLURM_CONF", conf))?;
    let t0 = Instant::now();
    loop {
        let state = ok(Command::new("sinfo").args(["-h", "-o", "%T"]).env("SLURM_CONF", conf)).unwrap_or_default();
        if state.starts_with("idle") {
            return Ok(cluster);
        }
        if t0.elapsed() > Duration::from_secs(45) {
            return Err(format!(
                "the node did not come up (sinfo: '{state}')\n{}\n{}",
                tail(&dir.join("log/slurmctld.log")),
                tail(&dir.join("log/slurmd.log"))
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A tiny study: a classification probe, EmbedAttack and PGD at two ε, two seeds.
fn experiment(dir: &Path) -> PathBuf {
    let cifar = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin");
    let text = format!(
        "name = \"slurm\"\n[run]\nsize = 28\nattack_batch_size = 2\n\n[[encoder]]\nname = \"tiny\"\ncheckpoint = \"{}\"\nnum_heads = 4\n\n\
         [[task]]\nname = \"cifar\"\ntask = \"cls\"\ntrain = {{ dataset = \"cifar10:{c}\" }}\neval = {{ dataset = \"cifar10:{c}\", split = \"test\" }}\n\
         heads = [{{ epochs = 5, batch_size = 4 }}]\n\n[[attack]]\nkinds = [\"embed\", \"task\"]\neps = [\"2/255\", \"8/255\"]\nsteps = 2\nseeds = [0, 1]\n",
        tiny_encoder(),
        c = cifar.display()
    );
    let path = dir.join("slurm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn cells(store: &Path) -> Vec<serde_json::Value> {
    Store::open_existing(store).unwrap().cells().unwrap().into_iter().map(|c| serde_json::to_value(c).unwrap()).collect()
}

#[test]
fn a_job_array_and_a_dependent_merge_give_the_unsharded_store() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = match start(&tmp.path().join("slurm")) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("slurm test skipped: {why}");
            return;
        }
    };
    let conf = cluster.conf.to_str().unwrap().to_string();
    let exp = experiment(tmp.path());
    let reference = tmp.path().join("reference");
    ok_json(&["run", exp.to_str().unwrap(), "--out", reference.to_str().unwrap(), "--json"]);

    let out = tmp.path().join("sharded");
    let bin = Path::new(env!("CARGO_BIN_EXE_robust-ssl")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/slurm-array.sh");
    let sbatch = |args: &[&str]| -> String {
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable").arg(format!("--chdir={}", tmp.path().display())).args(args).env("SLURM_CONF", &conf).env("PATH", &path);
        ok(&mut cmd).unwrap_or_else(|e| panic!("{e}"))
    };
    // The script asks for 8 tasks, a GPU and 8 CPUs each: this node has 2 CPUs and no GPU.
    let array = sbatch(&[
        "--array=0-1",
        "--cpus-per-task=1",
        "--gres=none",
        script.to_str().unwrap(),
        exp.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let merge = sbatch(&[&format!("--dependency=afterok:{array}"), "--wrap", &format!("robust-ssl merge {}", out.display())]);
    let t0 = Instant::now();
    loop {
        let queued =
            ok(Command::new("squeue").args(["-h", "-j", &format!("{array},{merge}")]).env("SLURM_CONF", &conf)).unwrap_or_default();
        if queued.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the jobs did not finish in 5 minutes:\n{queued}\n{}",
            tail(&cluster.dir.join("log/slurmctld.log"))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: String = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("slurm-"))
        .map(|e| tail(&e.path()))
        .collect::<Vec<_>>()
        .join("\n");
    for i in 0..2 {
        let shard = out.join(format!("results-shard-{i}-of-2.sqlite"));
        assert!(shard.is_file(), "array task {i} wrote no store:\n{logs}");
        let events = std::fs::read_to_string(out.join(format!("events-shard-{i}-of-2.jsonl"))).unwrap();
        assert!(events.contains("\"event\":\"cell\""), "array task {i} computed no cell:\n{logs}");
    }
    let merged = out.join("results.sqlite");
    assert!(merged.is_file(), "the dependent merge job wrote no store:\n{logs}");
    let (got, want) = (cells(&merged), cells(&reference.join("results.sqlite")));
    assert_eq!(got.len(), want.len(), "cells:\n{logs}");
    for (g, w) in got.iter().zip(&want) {
        assert!(g == w, "cell {} differs between the merged and the unsharded store:\n{g}\n{w}", w["key"]);
    }
    eprintln!("slurm test ran: job array {array} (2 tasks) and merge job {merge}, {} cells equal", got.len());
}
