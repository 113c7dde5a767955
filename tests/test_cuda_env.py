"""CUDA_VISIBLE_DEVICES for images built for the old convention: the before-notebook.d hook run by
dash and by bash (Jupyter Docker Stacks' start.sh sources it under `set -e`), and `gpuswarm-node
cuda-env`. The hook, the Python code and the runtime wrapper must agree on every input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpuswarm_node.slices import cuda_visible_devices

from .test_runtime_wrapper import Node, resource_env

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "templates" / "before-notebook.d" / "gpuswarm-cuda-env.sh"
G0 = "GPU-00000000-1111-4222-8333-444444444444"
G1 = "GPU-00000001-1111-4222-8333-444444444444"
MIG = "MIG-11111111-aaaa-5bbb-8ccc-000000000001"
# What start.sh does after sourcing: the notebook sees the variable; nothing else is left behind.
AFTER = 'printf "CVD=%s\\n" "${CUDA_VISIBLE_DEVICES-unset}"; set | grep "^_gsn" || true'

WELL_FORMED = [
    (f"{G0}::2", G0),
    (f"{G0}::1,{G0}::3", G0),
    (f"{G1}::1,{G0}::2,{G1}::3", f"{G1},{G0}"),
    (MIG, MIG),
    (f"{MIG},{G0}::1", f"{MIG},{G0}"),
    ("", ""),
]
MALFORMED = [f"{G0}::0", f"{G0}::x", f"{G0}::01", f"{G0}::1,", f",{G0}::1", f"{G0}::1,,{G0}::2", f" {G0}::1",
             f"{G0}::1;reboot", f"{G0}::1 && reboot", "$(reboot)", "`reboot`", "all", "0", f"{MIG}::1", "GPU-",
             f"{G0}::1::2", "GPU-a:b::1", "GPU-\u00e9::1", f"{G0}::1\n{G1}::1", "'", '"',
             # $(...) strips trailing newlines: the hook must not, or these would pass there alone.
             f"{G0}::1\n", f"{G0}::1\n\n", f"{MIG}\n", "\n", f"{G0}::1\r\n", f"{G0}::1\r", f"{G0}::\u0661",
             f"{G0}::\u00b2"]


def source(value: str | None, shell: str = "sh", kind: str | None = None, strict: bool = False):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "left-from-the-image"}
    variable = f"DOCKER_RESOURCE_{(kind or 'gpu').upper()}"
    if value is not None:
        env[variable] = value
    if kind is not None:
        env["GPUSWARM_GPU_RESOURCE"] = kind
    script = f'{"set -e; " if strict else ""}. "$1"; {AFTER}'
    return subprocess.run([shell, "-c", script, "hook", str(HOOK)], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("value, devices", WELL_FORMED)
def test_hook_sets_the_devices_of_the_slices(shell, value, devices):
    result = source(value, shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"CVD={devices}\n"
    assert result.stderr == f"gpuswarm-cuda-env: CUDA_VISIBLE_DEVICES='{devices}' (from DOCKER_RESOURCE_GPU)\n"


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_hook_without_reservation_hides_every_gpu(shell):
    assert source(None, shell).stdout == "CVD=\n"


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("value", MALFORMED)
def test_hook_stops_the_start_on_a_malformed_slice(shell, value):
    result = source(value, shell, strict=True)
    assert result.returncode == 1
    assert result.stdout == "", "nothing after the hook ran"
    assert result.stderr.startswith("gpuswarm-cuda-env: slice '")
    assert result.stderr.endswith("' in DOCKER_RESOURCE_GPU is malformed (expected GPU-<uuid>::<n> or MIG-<uuid>)\n")
    assert result.stderr.count("\n") == 1


def test_hook_under_set_e_as_start_sh_runs_it():
    result = source(f"{G0}::1,{G1}::2", "bash", strict=True)
    assert result.returncode == 0 and result.stdout == f"CVD={G0},{G1}\n"


def test_hook_reads_the_configured_kind():
    result = source(f"{G1}::1", "sh", kind="nvslice")
    assert result.stdout == f"CVD={G1}\n"
    # A kind with '-' makes a variable name only bash passes on; start.sh is bash.
    result = source(f"{G1}::1", "bash", kind="nvidia-gpu")
    assert result.stdout == f"CVD={G1}\n"


def test_hook_refuses_a_kind_that_is_not_one():
    result = source(f"{G1}::1", "sh", kind="gpu;reboot")
    assert result.returncode == 1 and "is not a resource kind" in result.stderr


def test_hook_is_posix_sh_and_leaves_nothing_behind():
    text = HOOK.read_text()
    assert not text.startswith("#!"), "sourced, not executed"
    assert "local " not in text and "[[" not in text and "function " not in text and "$'" not in text
    result = subprocess.run(["sh", "-n", str(HOOK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- one answer from all three implementations -----------------------------------------------------

@pytest.mark.parametrize("value, devices", WELL_FORMED[:-1])
def test_all_agree_on_well_formed_slices(tmp_path, value, devices):
    assert cuda_visible_devices(value, "DOCKER_RESOURCE_GPU") == devices
    assert source(value).stdout == f"CVD={devices}\n"
    node = Node(tmp_path, slices=[f"{g}::{n}" for g in (G0, G1) for n in (1, 2, 3)] + [MIG])
    node.spec(resource_env(value))
    assert node.create().returncode == 0
    assert node.visible() == [f"NVIDIA_VISIBLE_DEVICES={devices}"]


@pytest.mark.parametrize("value", MALFORMED)
def test_all_agree_on_malformed_slices(tmp_path, value):
    with pytest.raises(ValueError, match="is malformed"):
        cuda_visible_devices(value, "DOCKER_RESOURCE_GPU")
    assert source(value).returncode == 1
    node = Node(tmp_path)
    node.spec(resource_env(value))
    result = node.create()
    assert result.returncode == 1 and "is malformed" in result.stderr


MEMORY = 'printf "TF=%s XLA=%s/%s/%s\\n" "${TF_FORCE_GPU_ALLOW_GROWTH-unset}" "${XLA_PYTHON_CLIENT_PREALLOCATE-unset}" ' \
         '"${XLA_PYTHON_CLIENT_MEM_FRACTION-unset}" "${XLA_CLIENT_MEM_FRACTION-unset}"'


@pytest.mark.parametrize("value, own, printed", [
    (f"{G0}::2", "", "TF=true XLA=false/unset/unset"),
    (f"{MIG},{G1}::1", "", "TF=true XLA=false/unset/unset"),
    (MIG, "", "TF=unset XLA=unset/unset/unset"),                        # a MIG device is the notebook's own
    ("", "", "TF=unset XLA=unset/unset/unset"),                         # no GPU
    (f"{G0}::2", "TF_FORCE_GPU_ALLOW_GROWTH=false", "TF=false XLA=false/unset/unset"),
    (f"{G0}::2", "TF_FORCE_GPU_ALLOW_GROWTH=", "TF= XLA=false/unset/unset"),
    (f"{G0}::2", "XLA_CLIENT_MEM_FRACTION=.5", "TF=true XLA=unset/unset/.5"),
    (f"{G0}::2", "XLA_PYTHON_CLIENT_MEM_FRACTION=.2", "TF=true XLA=unset/.2/unset"),
])
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_hook_and_cuda_env_set_the_same_memory_settings(gsn, shell, value, own, printed):
    """For a slice of a GPU, the settings that need no share, each group left to the image or
    service that set any of it; the same from the hook (under set -e) and from cuda-env."""
    env = {"PATH": "/usr/bin:/bin", "DOCKER_RESOURCE_GPU": value}
    if own:
        env[own.partition("=")[0]] = own.partition("=")[2]
    hooked = subprocess.run([shell, "-c", f'set -e; . "$1"; {MEMORY}', "hook", str(HOOK)], env=env,
                            capture_output=True, text=True, timeout=30)
    assert hooked.returncode == 0, hooked.stderr
    assert hooked.stdout == printed + "\n"
    lines = gsn("cuda-env", env={k: v for k, v in env.items() if k != "PATH"})
    assert lines.returncode == 0, lines.stderr
    evaluated = subprocess.run(["sh", "-c", f'eval "$1"; {MEMORY}', "sh", lines.stdout], env=env,
                               capture_output=True, text=True, timeout=30)
    assert evaluated.stdout == printed + "\n"


# --- gpuswarm-node cuda-env -----------------------------------------------------------------------

def test_cuda_env_command_prints_sh_to_eval(gsn):
    result = gsn("cuda-env", env={"DOCKER_RESOURCE_GPU": f"{G0}::1,{MIG},{G0}::2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"export CUDA_VISIBLE_DEVICES={G0},{MIG}\n"
                             "export TF_FORCE_GPU_ALLOW_GROWTH=true\nexport XLA_PYTHON_CLIENT_PREALLOCATE=false\n")
    evaluated = subprocess.run(["sh", "-c", 'eval "$1"; echo "$CUDA_VISIBLE_DEVICES"', "sh", result.stdout],
                               capture_output=True, text=True)
    assert evaluated.stdout == f"{G0},{MIG}\n"


def test_cuda_env_command_kind_and_no_reservation(gsn):
    assert gsn("cuda-env").stdout == "export CUDA_VISIBLE_DEVICES=''\n"
    assert gsn("cuda-env", env={"DOCKER_RESOURCE_GPU": MIG}).stdout == f"export CUDA_VISIBLE_DEVICES={MIG}\n"
    result = gsn("cuda-env", "--set", "gpu.resource=nvslice", env={"DOCKER_RESOURCE_NVSLICE": f"{G1}::3",
                                                                   "TF_FORCE_GPU_ALLOW_GROWTH": "false",
                                                                   "XLA_CLIENT_MEM_FRACTION": ".5"})
    assert result.stdout == f"export CUDA_VISIBLE_DEVICES={G1}\n"
    result = gsn("cuda-env", env={"GPUSWARM_GPU_RESOURCE": "nvslice", "DOCKER_RESOURCE_NVSLICE": MIG})
    assert result.stdout == f"export CUDA_VISIBLE_DEVICES={MIG}\n"


def test_cuda_env_command_malformed_is_one_line_and_prints_nothing_to_eval(gsn):
    result = gsn("cuda-env", env={"DOCKER_RESOURCE_GPU": f"{G0}::1;reboot"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: slice ") and "is malformed" in result.stderr
    assert "Traceback" not in result.stderr
