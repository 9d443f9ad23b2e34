"""jobs/slurm/t5jobs.py: what t5submit, t5sweep and t5status share.

Variant names, run-directory facts (config.txt, ckpt/latest, metrics.jsonl, job-events.log),
the trainer's plan (t5pretrain --dry-run --plan-world ...), partition limits and job states from
Slurm, and the batch script text. Python 3 standard library only.
"""
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BODY = os.path.join(ROOT, "jobs", "slurm", "t5job.body.sh")
PUBLISHED = os.path.join(ROOT, "tests", "data", "seed-variants.tsv")
EXIT_CONFIG = 2


class Refused(Exception):
    """A request that must not be submitted; the message says why and what to do."""


def trainer_path():
    return os.environ.get("T5_TRAINER") or os.path.join(ROOT, "bin", "t5pretrain")


def die(prog, msg, code=EXIT_CONFIG):
    sys.stderr.write("%s: %s\n" % (prog, msg))
    sys.exit(code)


# ---- variants --------------------------------------------------------------------------------

_variants = None


def known_variants():
    """Names from t5pretrain --list-variants (canonical t5-efficient-* form)."""
    global _variants
    if _variants is None:
        tr = trainer_path()
        if not os.access(tr, os.X_OK):
            raise Refused("no trainer at %s. HINT: build it first: make -j2 all" % tr)
        out = subprocess.run([tr, "--list-variants"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise Refused("%s --list-variants failed: %s" % (tr, out.stderr.strip()))
        _variants = [l.split("\t")[0] for l in out.stdout.splitlines()[1:] if l.strip()]
    return _variants


def canonical(name):
    """'google/t5-efficient-mini', 't5-efficient-mini', 'mini' -> 't5-efficient-mini'."""
    n = name.strip().lower()
    if n.startswith("google/"):
        n = n[len("google/"):]
    if not n.startswith("t5-efficient-"):
        n = "t5-efficient-" + n
    return n


def check_variant(name):
    """The canonical name of a known variant, or Refused with the nearest names."""
    c = canonical(name)
    names = known_variants()
    if c in names:
        return c
    near = difflib.get_close_matches(c, names, n=3, cutoff=0.6)
    hint = (" Nearest: %s." % ", ".join(near)) if near else ""
    raise Refused("unknown variant '%s'.%s HINT: bin/t5pretrain --list-variants lists them all"
                  % (name, hint))


def published_variants():
    """The 100 published T5-Efficient checkpoints (tests/data/seed-variants.tsv)."""
    if not os.path.exists(PUBLISHED):
        raise Refused("no list of published variants at %s" % PUBLISHED)
    out = []
    for line in open(PUBLISHED):
        if line.startswith("#") or line.startswith("name\t") or not line.strip():
            continue
        out.append(line.split("\t")[0])
    return out


# ---- run directories -------------------------------------------------------------------------

def read_config(run_dir):
    """config.txt as a dict ('name = value' lines), {} if absent."""
    cfg = {}
    try:
        for line in open(os.path.join(run_dir, "config.txt")):
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                cfg[k.strip()] = v.strip()
    except OSError:
        pass
    return cfg


def latest_checkpoint(run_dir):
    """(name, path, manifest dict or None) of ckpt/latest, or None."""
    try:
        name = open(os.path.join(run_dir, "ckpt", "latest")).read().strip()
    except OSError:
        return None
    if not name:
        return None
    path = os.path.join(run_dir, "ckpt", name)
    man = None
    try:
        man = json.load(open(os.path.join(path, "manifest.json")))
    except (OSError, ValueError):
        pass
    return name, path, man


def run_dir_variant(run_dir):
    """The variant a run directory belongs to (config.txt or the checkpoint), or None."""
    ck = latest_checkpoint(run_dir)
    if ck and ck[2]:
        v = (ck[2].get("meta") or {}).get("variant") or ck[2].get("variant")
        if v:
            return v
    return read_config(run_dir).get("variant")


def has_results(run_dir):
    return any(os.path.exists(os.path.join(run_dir, f)) for f in ("metrics.jsonl", "final", "ckpt"))


def check_run_dir(run_dir, variant):
    """Refused if run_dir holds another variant's run, or a run that cannot be continued."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise Refused("--run-dir %s exists and is not a directory" % run_dir)
    if not os.path.isdir(run_dir):
        return "new"
    other = run_dir_variant(run_dir)
    if other and canonical(other) != variant:
        raise Refused("run directory %s holds a run of %s, not %s. HINT: choose another --run-dir"
                      " (one directory per variant)" % (run_dir, canonical(other), variant))
    if latest_checkpoint(run_dir):
        return "resume"
    if os.path.isdir(os.path.join(run_dir, "final")):
        raise Refused("run directory %s holds a finished run (final/) and no checkpoint to continue."
                      " HINT: choose another --run-dir" % run_dir)
    if has_results(run_dir):
        raise Refused("run directory %s holds results (metrics.jsonl) but no checkpoint (ckpt/latest):"
                      " it cannot be resumed and the trainer would refuse it. HINT: another --run-dir,"
                      " or remove the old results" % run_dir)
    return "new"


# ---- the trainer's plan ----------------------------------------------------------------------

def node_memory_mb(part):
    """The memory one node of the partition gives a job (RealMemory, or MaxMemPerNode if lower)."""
    if not part:
        return None
    mb = part["node_mem_mb"]
    if part.get("max_mem_per_node_mb"):
        mb = min(mb, part["max_mem_per_node_mb"])
    return mb


def plan(variant, world, ranks_per_node, cpus_per_task, pp, trainer_args, part=None):
    """Run t5pretrain --dry-run --plan-world ... and return the JSON of its 'plan:' line. With a
    partition, the trainer plans for its nodes' memory (T5_PLAN_NODE_MEMORY_MB, see
    common/resources.h), not for this login node's."""
    tr = trainer_path()
    with tempfile.TemporaryDirectory(prefix="t5plan.") as tmp:
        cmd = [tr, "--dry-run", "--variant", variant, "--plan-world", str(world),
               "--plan-ranks-per-node", str(ranks_per_node)]
        if pp:
            cmd += ["--pp", str(pp)]
        args = list(trainer_args)
        if "--synthetic" not in args and not any(a == "--data" or a.startswith("--data=") for a in args):
            args.append("--synthetic")   # size the plan even when the data is only on the cluster
        cmd += args + ["--run-dir", os.path.join(tmp, "run")]
        env = dict(os.environ, SLURM_CPUS_PER_TASK=str(cpus_per_task), OMP_NUM_THREADS=str(cpus_per_task))
        env.pop("SLURM_JOB_ID", None)
        env.pop("T5_PLAN_NODE_MEMORY_MB", None)
        if part:
            env["T5_PLAN_NODE_MEMORY_MB"] = str(node_memory_mb(part))
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            raise Refused("the trainer's plan (%s) did not finish in 600 s" % " ".join(cmd))
    lines = (out.stdout + "\n" + out.stderr).strip().splitlines()
    if out.returncode != 0:
        where = (" for the nodes of partition %s (%d MB each)" % (part["name"], node_memory_mb(part))) if part else ""
        raise Refused("the trainer refused this configuration%s (exit %d):\n  %s" %
                      (where, out.returncode, "\n  ".join(lines[-8:])))
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("plan: "):
            try:
                return json.loads(line[len("plan: "):])
            except ValueError:
                break
    raise Refused("the trainer printed no 'plan: {JSON}' line for --dry-run --plan-world. HINT: the"
                  " trainer in %s is older than the jobs/ scripts; rebuild it (make -j2 all)" % tr)


# ---- Slurm -----------------------------------------------------------------------------------

def slurm_available():
    """sbatch and scontrol on PATH and a configuration to read (without one the clients retry
    for a minute before failing)."""
    from shutil import which
    if which("sbatch") is None or which("scontrol") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    if conf:
        return os.path.isfile(conf)
    return any(os.path.isfile(p) for p in ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf",
                                           "/run/slurm/conf/slurm.conf", "/var/spool/slurmd/conf-cache/slurm.conf"))


def run_slurm(cmd, timeout=30):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, "", str(e)
    return r.returncode, r.stdout, r.stderr


def kv_line(text):
    """'A=1 B=two C=x y' (scontrol -o) -> dict; values with spaces only for the last keys."""
    d = {}
    for tok in re.findall(r"(\w[\w:/]*)=(\S*)", text):
        d.setdefault(tok[0], tok[1])
    return d


def default_partition():
    rc, out, _ = run_slurm(["sinfo", "-h", "-o", "%P"])
    if rc != 0:
        return None
    parts = out.split()
    for p in parts:
        if p.endswith("*"):
            return p[:-1]
    return parts[0] if parts else None


def partition_limits(partition):
    """{'name', 'nodes', 'node_mem_mb' (smallest), 'node_cpus' (smallest), 'max_mem_per_node_mb',
    'max_nodes'} from scontrol/sinfo, or None when Slurm cannot be asked."""
    if not partition:
        partition = default_partition()
        if not partition:
            return None
    rc, out, err = run_slurm(["scontrol", "show", "partition", partition, "-o"])
    if rc != 0:
        raise Refused("partition '%s': %s" % (partition, err.strip() or out.strip()))
    p = kv_line(out)
    rc, out, err = run_slurm(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %m %c"])
    if rc != 0:
        raise Refused("sinfo -p %s failed: %s" % (partition, err.strip()))
    nodes = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3:
            nodes[f[0]] = (int(re.sub(r"\D", "", f[1]) or 0), int(re.sub(r"\D", "", f[2]) or 0))
    if not nodes:
        raise Refused("partition '%s' has no nodes" % partition)

    def num(v):
        return int(v) if v and v.isdigit() else None
    return {
        "name": partition,
        "nodes": len(nodes),
        "node_mem_mb": min(m for m, _ in nodes.values()),
        "node_cpus": min(c for _, c in nodes.values()),
        "max_mem_per_node_mb": num(p.get("MaxMemPerNode")),
        "max_nodes": num(p.get("MaxNodes")),
    }


def job_info(job_id):
    """scontrol show job -o as a dict, or None (unknown job, or no Slurm)."""
    rc, out, _ = run_slurm(["scontrol", "show", "job", "-o", str(job_id)], timeout=15)
    if rc != 0 or "JobId=" not in out:
        return None
    return kv_line(out.splitlines()[0])


ACTIVE_STATES = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                 "REQUEUE_FED", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def check_no_active_job(run_dir):
    """Refused when Slurm still has a queued or running job for run_dir (two trainers must never
    write one run directory). The job ids come from run_dir/job-events.log."""
    jobs = []
    try:
        for line in open(os.path.join(run_dir, "job-events.log")):
            f = line.split("\t")
            if len(f) >= 4 and f[1] not in jobs:
                jobs.append(f[1])
    except OSError:
        return
    for j in reversed(jobs[-5:]):
        info = job_info(j)
        if info and info.get("JobState") in ACTIVE_STATES:
            raise Refused("run directory %s already has job %s (%s). HINT: wait for it, or scancel %s first;"
                          " a requeued job resumes by itself" % (run_dir, j, info.get("JobState"), j))


def mem_request_mb(plan_json, part):
    """--mem per node: the trainer's per-node estimate / 0.85 (the trainer keeps its estimate
    within 85% of what the job's cgroup allows) plus 512 MiB for MPI and the runtime, at most
    what a node has."""
    need = float(plan_json.get("memory_per_node_bytes") or 0)
    mb = int(need / 0.85 / 1048576) + 512
    if part:
        mb = min(mb, node_memory_mb(part))
    return mb


def check_fits(plan_json, part, nodes, ranks_per_node, cpus_per_task):
    """Refused when the partition cannot hold the plan (memory, CPUs, node count)."""
    if not part:
        return
    need = int(plan_json.get("memory_per_node_bytes") or 0)
    have = part["node_mem_mb"] * 1048576
    limit_src = "its nodes have %.1f GiB" % (have / 2**30)
    if part.get("max_mem_per_node_mb") and part["max_mem_per_node_mb"] * 1048576 < have:
        have = part["max_mem_per_node_mb"] * 1048576
        limit_src = "its MaxMemPerNode is %.1f GiB" % (have / 2**30)
    if need > have:
        raise Refused("%s needs %.1f GiB per node (%d rank(s) x %.1f GiB, the trainer's estimate) but"
                      " partition %s cannot hold it: %s. HINT: more nodes (--nodes), fewer ranks per node,"
                      " pipeline stages (--pp), or a smaller --micro-batch after --"
                      % (plan_json.get("variant", "?"), need / 2**30, ranks_per_node,
                         int(plan_json.get("memory_per_rank_bytes") or 0) / 2**30, part["name"], limit_src))
    if ranks_per_node * cpus_per_task > part["node_cpus"]:
        raise Refused("%d rank(s) per node x %d CPU(s) = %d CPUs, but the nodes of partition %s have %d."
                      " HINT: fewer --ntasks-per-node or --cpus-per-task"
                      % (ranks_per_node, cpus_per_task, ranks_per_node * cpus_per_task, part["name"],
                         part["node_cpus"]))
    if nodes > part["nodes"] or (part.get("max_nodes") and nodes > part["max_nodes"]):
        raise Refused("--nodes %d: partition %s has %d node(s)%s" %
                      (nodes, part["name"], part["nodes"],
                       (", MaxNodes %d" % part["max_nodes"]) if part.get("max_nodes") else ""))


# ---- batch scripts ---------------------------------------------------------------------------

def sbatch_header(opts):
    """#SBATCH lines from a dict of sbatch long options (None values skipped)."""
    lines = ["#!/bin/bash"]
    for k, v in opts:
        if v is None or v is False:
            continue
        lines.append("#SBATCH --%s" % k if v is True else "#SBATCH --%s=%s" % (k, v))
    return "\n".join(lines) + "\n"


def settings_block(settings, args):
    out = ["", "# ---- settings (written by jobs/t5submit or jobs/t5sweep) ----"]
    for k, v in settings:
        out.append("%s=%s" % (k, shlex.quote(str(v))))
    out.append("T5_ARGS=(%s)" % " ".join(shlex.quote(a) for a in args))
    out.append("")
    return "\n".join(out) + "\n"


def script_text(header_opts, settings, args, plan_json):
    body = open(BODY).read()
    plan_line = "# plan: %s\n" % json.dumps(plan_json, sort_keys=True) if plan_json else ""
    return sbatch_header(header_opts) + plan_line + settings_block(settings, args) + body


def write_file(path, text, mode=0o644):
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def sbatch(script, extra=()):
    """Submit; return the job id (Refused with sbatch's message on failure)."""
    rc, out, err = run_slurm(["sbatch", "--parsable"] + list(extra) + [script], timeout=60)
    if rc != 0:
        raise Refused("sbatch %s failed: %s" % (script, (err or out).strip()))
    return out.strip().split(";")[0]


def append_event(run_dir, job_id, event, detail=""):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "job-events.log"), "a") as f:
        f.write("%s\t%s\t-\t%s\t%s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         job_id, event, detail))


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%.1f %s" % (n, unit)) if unit != "B" else ("%d B" % n)
        n /= 1024.0
