# gpuswarm-cuda-env.sh: set CUDA_VISIBLE_DEVICES from the GPU slices Swarm gave this container.
#
# For notebook images started on a node without gpuswarm-node's runtime (the old convention):
# copy it into /usr/local/bin/before-notebook.d/, where the Jupyter Docker Stacks' start.sh
# sources it. POSIX sh; it sets CUDA_VISIBLE_DEVICES and, for a slice of a GPU, the frameworks'
# memory settings below, and leaves no other variable behind.
#
# Swarm puts the slices in DOCKER_RESOURCE_<KIND> (KIND: $GPUSWARM_GPU_RESOURCE, default gpu),
# e.g. "GPU-<uuid>::2,MIG-<uuid>". The device of GPU-<uuid>::<n> is GPU-<uuid>; a GPU or MIG
# UUID is its own device. No slices means no GPU: CUDA_VISIBLE_DEVICES is set empty, as the
# slice-aware runtime would do. A malformed slice stops the start (exit, since this file is
# sourced): a notebook silently using a GPU it did not reserve is worse than one that does not
# start.

_gsn_upper=ABCDEFGHIJKLMNOPQRSTUVWXYZ
_gsn_lower=abcdefghijklmnopqrstuvwxyz
_gsn_ok="0123456789${_gsn_lower}${_gsn_upper}/-"
_gsn_kind=${GPUSWARM_GPU_RESOURCE:-gpu}
case $_gsn_kind in
    *[!0123456789${_gsn_lower}${_gsn_upper}_-]*)
        echo "gpuswarm-cuda-env: GPUSWARM_GPU_RESOURCE '$_gsn_kind' is not a resource kind" >&2
        exit 1 ;;
esac
_gsn_var=DOCKER_RESOURCE_$(printf '%s' "$_gsn_kind" | tr "$_gsn_lower" "$_gsn_upper")
# printenv, not ${...}: a kind with '-' makes a name the shell cannot expand. $(...) strips
# trailing newlines, which would make "GPU-<uuid>::1<newline>" pass here and fail everywhere else:
# the x after printenv's own newline keeps the value whole, then both come off. Unset: empty.
_gsn_nl='
'
_gsn_value=$(printenv "$_gsn_var" && echo x || :)
_gsn_value=${_gsn_value%"${_gsn_nl}x"}
_gsn_malformed() {
    # One line whatever the value holds: anything unexpected shows as '?'.
    printf "gpuswarm-cuda-env: slice '%s' in %s is malformed (expected GPU-<uuid>::<n> or MIG-<uuid>)\n" \
        "$(printf '%.80s' "$_gsn_slice" | tr -c "0123456789${_gsn_lower}${_gsn_upper}/:-" '?')" "$_gsn_var" >&2
}
_gsn_devices=
_gsn_part=
_gsn_rest=$_gsn_value
while [ -n "$_gsn_value" ]; do
    _gsn_slice=${_gsn_rest%%,*}
    case $_gsn_slice in
        GPU-?*::[123456789]*) _gsn_device=${_gsn_slice%%::*}; _gsn_n=${_gsn_slice#*::}; _gsn_part=1 ;;
        GPU-?* | MIG-?*) _gsn_device=$_gsn_slice; _gsn_n=1 ;;
        *) _gsn_device=; _gsn_n= ;;
    esac
    case $_gsn_device$_gsn_n in
        '' | *[!$_gsn_ok]* | *::*)
            _gsn_malformed; exit 1 ;;
    esac
    case $_gsn_n in
        *[!0123456789]*)
            _gsn_malformed; exit 1 ;;
    esac
    case ,$_gsn_devices, in
        *",$_gsn_device,"*) ;;
        *) _gsn_devices=${_gsn_devices:+$_gsn_devices,}$_gsn_device ;;
    esac
    [ "$_gsn_rest" = "$_gsn_slice" ] && break
    _gsn_rest=${_gsn_rest#*,}
done
export CUDA_VISIBLE_DEVICES="$_gsn_devices"
echo "gpuswarm-cuda-env: CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' (from $_gsn_var)" >&2
# A slice of a GPU shares its memory with the notebooks holding the others, and how many they are is
# not known here: the settings that need no share (gpuswarm_node/slices.py, memory_share_env, as
# `gpuswarm-node cuda-env` prints them), each group left alone when the image or service set any of
# it. TensorFlow then allocates as needed, JAX on demand, instead of most of the GPU at start.
if [ -n "$_gsn_part" ]; then
    [ -n "${TF_FORCE_GPU_ALLOW_GROWTH+x}" ] || export TF_FORCE_GPU_ALLOW_GROWTH=true
    [ -n "${XLA_PYTHON_CLIENT_MEM_FRACTION+x}${XLA_CLIENT_MEM_FRACTION+x}${XLA_PYTHON_CLIENT_PREALLOCATE+x}" ] ||
        export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi
unset _gsn_upper _gsn_lower _gsn_ok _gsn_nl _gsn_kind _gsn_var _gsn_value _gsn_devices _gsn_rest _gsn_slice \
    _gsn_device _gsn_n _gsn_part
unset -f _gsn_malformed
