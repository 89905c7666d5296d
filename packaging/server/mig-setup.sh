#!/usr/bin/env bash
# Split one NVIDIA GPU into seven 1g MIG slices (one Triton instance each) and list their UUIDs.
#
#   mig-setup.sh [--gpu N] [--dry-run] [--replace] [--uuids-file FILE]
#                [--profile NAME --count K] [--gpu-name NAME] [--memory-mib MIB]
#   mig-setup.sh --teardown [--gpu N] [--dry-run]
#
#   --gpu N          the GPU's index in nvidia-smi (default 0)
#   --dry-run        print the nvidia-smi commands instead of running them; with --gpu-name
#                    (and --memory-mib where the name does not give the size) it needs no GPU
#   --replace        destroy the GPU's existing MIG instances first (otherwise: refuse)
#   --uuids-file F   also write the MIG UUIDs to F, one a line
#   --profile NAME   a GPU instance profile instead of the detected 1g one, e.g. 2g.20gb
#   --count K        how many instances of it (default 7)
#   --gpu-name NAME  the GPU's name as nvidia-smi prints it (default: asked from nvidia-smi)
#   --memory-mib MIB its memory in MiB (default: asked from nvidia-smi, or read from the name)
#   --teardown       destroy the compute and GPU instances and disable MIG
#
# Profiles for seven 1g slices: A100 40GB 1g.5gb, A100 80GB 1g.10gb, H100 80GB 1g.10gb,
# H100 NVL (94GB) 1g.12gb, H200 1g.18gb; A30 has four 1g.6gb. Needs root, and no process
# may be using the GPU while MIG mode changes.
set -euo pipefail

gpu=0
dry_run=0
replace=0
teardown=0
uuids_file=""
profile=""
count=""
gpu_name=""
memory_mib=""

fail() { echo "mig-setup.sh: $*" >&2; exit 2; }
need_value() { [[ $2 -ge 2 ]] || fail "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu) need_value "$1" $#; gpu="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --replace) replace=1; shift ;;
        --teardown) teardown=1; shift ;;
        --uuids-file) need_value "$1" $#; uuids_file="$2"; shift 2 ;;
        --profile) need_value "$1" $#; profile="$2"; shift 2 ;;
        --count) need_value "$1" $#; count="$2"; shift 2 ;;
        --gpu-name) need_value "$1" $#; gpu_name="$2"; shift 2 ;;
        --memory-mib) need_value "$1" $#; memory_mib="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) fail "unknown argument '$1' (try --help)" ;;
    esac
done

[[ "$gpu" =~ ^[0-9]+$ ]] || fail "--gpu: expected a GPU index such as 0, got '$gpu'"
[[ -z "$count" || "$count" =~ ^[1-7]$ ]] || fail "--count: expected 1 to 7, got '$count'"
[[ -z "$memory_mib" || "$memory_mib" =~ ^[0-9]+$ ]] \
    || fail "--memory-mib: expected a number of MiB, got '$memory_mib'"
[[ -z "$profile" || "$profile" =~ ^[1-7]g\.[0-9]+gb(\+me)?$ ]] \
    || fail "--profile: expected a MIG profile name such as 1g.10gb, got '$profile'"

have_nvidia_smi() { command -v nvidia-smi >/dev/null 2>&1; }

# Print a command (dry run) or run it, echoing it first so a log shows what was done.
step() {
    if [[ $dry_run -eq 1 ]]; then
        echo "$*"
    else
        echo "+ $*" >&2
        "$@"
    fi
}

query_gpu() {
    nvidia-smi -i "$gpu" --query-gpu="$1" --format=csv,noheader,nounits | head -n 1
}

if [[ $dry_run -eq 0 ]]; then
    have_nvidia_smi || fail "nvidia-smi not found: run this on the GPU host (or use --dry-run)"
    [[ $(id -u) -eq 0 ]] || fail "changing MIG mode needs root (or use --dry-run)"
fi

if [[ $teardown -eq 1 ]]; then
    # Compute instances first: a GPU instance with compute instances cannot be destroyed.
    step nvidia-smi mig -i "$gpu" -dci
    step nvidia-smi mig -i "$gpu" -dgi
    step nvidia-smi -i "$gpu" -mig 0
    exit 0
fi

if [[ -z "$gpu_name" ]]; then
    have_nvidia_smi || fail "no nvidia-smi to ask the GPU's name: pass --gpu-name"
    gpu_name="$(query_gpu name)"
fi
if [[ -z "$memory_mib" ]] && have_nvidia_smi && [[ $dry_run -eq 0 ]]; then
    memory_mib="$(query_gpu memory.total)"
fi
if [[ -z "$memory_mib" ]]; then
    # nvidia-smi's names carry the size for most boards: "NVIDIA A100-SXM4-40GB".
    if [[ "$gpu_name" =~ ([0-9]+)GB ]]; then
        memory_mib=$(( BASH_REMATCH[1] * 1024 ))
    elif [[ "$gpu_name" == *"H100 PCIe"* ]]; then
        memory_mib=81559
    elif [[ "$gpu_name" == *"H100 NVL"* ]]; then
        memory_mib=95830
    elif [[ "$gpu_name" == *"H200"* ]]; then
        memory_mib=143771
    elif [[ "$gpu_name" == *"A30"* ]]; then
        memory_mib=24576
    fi
fi

if [[ -z "$profile" ]]; then
    case "$gpu_name" in
        *A100*)
            [[ -n "$memory_mib" ]] || fail "'$gpu_name': 40GB or 80GB? pass --memory-mib"
            if (( memory_mib <= 50000 )); then profile="1g.5gb"; else profile="1g.10gb"; fi ;;
        *H100*)
            [[ -n "$memory_mib" ]] || fail "'$gpu_name': how much memory? pass --memory-mib"
            if (( memory_mib <= 90000 )); then profile="1g.10gb"; else profile="1g.12gb"; fi ;;
        *H200*) profile="1g.18gb" ;;
        *A30*) profile="1g.6gb"; count="${count:-4}" ;;
        *) fail "no known 1g MIG profile for '$gpu_name' (A100, A30, H100, H200 are known): pass --profile and --count" ;;
    esac
fi
count="${count:-7}"

echo "# GPU $gpu: $gpu_name${memory_mib:+, $memory_mib MiB}: $count x $profile" >&2

if [[ $dry_run -eq 0 ]]; then
    existing="$(nvidia-smi mig -i "$gpu" -lgi 2>/dev/null | grep -c -E '^\|[[:space:]]+[0-9]+[[:space:]]+MIG' || true)"
    if [[ "$existing" != "0" && $replace -eq 0 ]]; then
        fail "GPU $gpu already has $existing MIG GPU instances: pass --replace to destroy them first"
    fi
fi

step nvidia-smi -i "$gpu" -mig 1
if [[ $dry_run -eq 0 ]]; then
    mode="$(query_gpu mig.mode.current)"
    if [[ "$mode" != "Enabled" ]]; then
        echo "mig-setup.sh: MIG mode of GPU $gpu is '$mode', not yet Enabled. Stop every process" \
             "using the GPU, then reset it (nvidia-smi -i $gpu -r) or reboot, and run this again." >&2
        exit 3
    fi
fi
if [[ $replace -eq 1 ]]; then
    # Either may find nothing to destroy; that is not an error here.
    step nvidia-smi mig -i "$gpu" -dci || true
    step nvidia-smi mig -i "$gpu" -dgi || true
fi

profiles="$profile"
for (( i = 1; i < count; i++ )); do profiles+=",$profile"; done
# -C gives each GPU instance its default compute instance, which is what a MIG device needs.
step nvidia-smi mig -i "$gpu" -cgi "$profiles" -C
step nvidia-smi -L

if [[ $dry_run -eq 1 ]]; then
    exit 0
fi

# `nvidia-smi -L` lists "GPU <i>: ..." then that GPU's "  MIG <profile> Device <k>: (UUID: MIG-...)".
uuids="$(nvidia-smi -L | awk -v gpu="$gpu" '
    /^GPU [0-9]+:/ { current = $2; sub(":", "", current) }
    current == gpu && /MIG-/ { match($0, /MIG-[0-9a-fA-F-]+/); print substr($0, RSTART, RLENGTH) }
')"
found="$(grep -c . <<<"$uuids" || true)"
if [[ "$found" -ne "$count" ]]; then
    fail "expected $count MIG devices on GPU $gpu, nvidia-smi -L lists $found"
fi
echo "$uuids"
if [[ -n "$uuids_file" ]]; then
    printf '%s\n' "$uuids" >"$uuids_file"
    echo "# wrote $count MIG UUIDs to $uuids_file" >&2
fi
