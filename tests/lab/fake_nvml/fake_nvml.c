/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 for machines without GPUs.
 *
 * pynvml (nvidia-ml-py) loads it unchanged with CDLL("libnvidia-ml.so.1"),
 * so the product's real NVML code runs against "GPUs" described in a text
 * file.  This is the only fake in the test lab: everything above it is real.
 *
 * The config is read at init, from $FAKE_NVML_CONFIG or
 * /etc/fake-nvml/config.  A missing file behaves like a machine whose kernel
 * driver is not loaded.  Format, one item a line, '#' starts a comment:
 *
 *   mode ok | driver-not-loaded | no-permission | version-mismatch
 *   driver 550.54.15
 *   cuda 12040
 *   gpu <GPU-uuid> <memory MiB> <pci bus id> <mig> <name, rest of the line>
 *   mig <MIG-uuid> <memory MiB> [<profile, e.g. 1g.10gb>]
 *   cuda-init <CUresult>    what cuInit answers (default 0: success)
 *
 * <mig> is "none" (GPU cannot do MIG), "on", "off", or "<current>/<pending>"
 * such as "off/on" (a mode change waiting for a GPU reset).  "mig" lines
 * describe the MIG devices of the "gpu" line above them.
 *
 * The same library is libcuda.so.1 too (fake_nvml.py links that name to it):
 * cuInit, cuDeviceGetCount and cuGetErrorName of the CUDA driver API, on the
 * same config.  cuInit fails with the "cuda-init" code, with 100
 * (CUDA_ERROR_NO_DEVICE) where NVML finds no driver, and with 803
 * (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH) in mode version-mismatch; the device
 * count is the number of "gpu" lines.
 *
 * Faults, for health checks: a second file, $FAKE_NVML_FAULTS or
 * /etc/fake-nvml/faults, read again at every call that it concerns (a test
 * writes it while the process runs; no file means no fault), one a line:
 *
 *   lost <GPU-uuid>            calls on the GPU answer NVML_ERROR_GPU_IS_LOST
 *   xid <GPU-uuid> <xid>       one Xid event (nvmlEventTypeXidCriticalError),
 *                              delivered once to each event set created
 *                              before the line was written
 *   retired-pending <GPU-uuid> nvmlDeviceGetRetiredPagesPendingStatus: yes
 *   remap-pending <GPU-uuid>   nvmlDeviceGetRemappedRows: a pending remapping
 *   remap-failure <GPU-uuid>   nvmlDeviceGetRemappedRows: a failed remapping
 *
 * Return codes follow nvml.h; where nvml.h leaves a case open (calls on MIG
 * device handles that only make sense for whole GPUs) we answer
 * NVML_ERROR_NOT_SUPPORTED.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 64
/* A100/H100 allow at most 7 MIG devices; NVML reports that as the max. */
#define MAX_MIG 7
#define UUID_LEN 96
#define NAME_LEN 96
#define VERSION_LEN 80
#define MIB (1024ULL * 1024ULL)

#define MIG_NONE (-1)
#define MIG_OFF 0
#define MIG_ON 1

/* nvml.h makes nvmlDevice_t an opaque pointer; ours points into gpus[]. */
struct nvmlDevice_st {
    int is_mig;
    unsigned index; /* GPU index, or MIG index under its parent */
    struct nvmlDevice_st *parent;
    char uuid[UUID_LEN];
    char name[NAME_LEN];
    unsigned long long memory;
    /* whole GPUs only */
    unsigned domain, bus, device, function;
    int mig_current, mig_pending;
    unsigned mig_count;
    struct nvmlDevice_st *migs;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned)(sizeof(nvmlMemory_v2_t) | (2 << 24)))

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned init_count;
static char driver_version[VERSION_LEN];
static int cuda_version;
static int cuda_init_result; /* "cuda-init": what cuInit answers */
static int cuda_ready;       /* cuInit succeeded */
static unsigned gpu_count;
static struct nvmlDevice_st gpus[MAX_GPUS];
static struct nvmlDevice_st migs[MAX_GPUS][MAX_MIG];

/* ---- config ---------------------------------------------------------- */

static char *next_token(char **p)
{
    char *s = *p, *start;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s) {
        *p = s;
        return NULL;
    }
    start = s;
    while (*s && !isspace((unsigned char)*s))
        s++;
    if (*s)
        *s++ = '\0';
    *p = s;
    return start;
}

static int set_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

static int parse_mib(const char *s, unsigned long long *out)
{
    char *end;
    unsigned long long v;
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v == 0 || v > (~0ULL) / MIB)
        return -1;
    *out = v * MIB;
    return 0;
}

static int parse_mig_word(const char *s, size_t n, int *out)
{
    if (n == 2 && !strncmp(s, "on", 2))
        *out = MIG_ON;
    else if (n == 3 && !strncmp(s, "off", 3))
        *out = MIG_OFF;
    else
        return -1;
    return 0;
}

static int parse_mig_mode(const char *s, int *current, int *pending)
{
    const char *slash;
    if (!s)
        return -1;
    if (!strcmp(s, "none")) {
        *current = *pending = MIG_NONE;
        return 0;
    }
    slash = strchr(s, '/');
    if (!slash) {
        if (parse_mig_word(s, strlen(s), current))
            return -1;
        *pending = *current;
        return 0;
    }
    if (parse_mig_word(s, (size_t)(slash - s), current))
        return -1;
    return parse_mig_word(slash + 1, strlen(slash + 1), pending);
}

static int parse_bus_id(const char *s, struct nvmlDevice_st *d)
{
    int used = -1;
    if (!s || sscanf(s, "%x:%x:%x.%x%n", &d->domain, &d->bus, &d->device,
                     &d->function, &used) != 4 || s[used] != '\0')
        return -1;
    return (d->bus > 0xff || d->device > 0x1f || d->function > 7) ? -1 : 0;
}

static const char *parse_gpu(char *rest)
{
    struct nvmlDevice_st *g;
    char *uuid = next_token(&rest), *mem = next_token(&rest);
    char *bus = next_token(&rest), *mig = next_token(&rest);
    char *name = rest, *end;

    if (gpu_count == MAX_GPUS)
        return "too many GPUs";
    g = &gpus[gpu_count];
    memset(g, 0, sizeof(*g));
    g->index = gpu_count;
    g->migs = migs[gpu_count];
    if (!uuid || strncmp(uuid, "GPU-", 4) || set_str(g->uuid, UUID_LEN, uuid))
        return "GPU uuid must look like GPU-...";
    if (parse_mib(mem, &g->memory))
        return "GPU memory must be a positive number of MiB";
    if (parse_bus_id(bus, g))
        return "PCI bus id must look like 00000000:3B:00.0";
    if (parse_mig_mode(mig, &g->mig_current, &g->mig_pending))
        return "MIG mode must be none, on, off or <on|off>/<on|off>";
    while (isspace((unsigned char)*name))
        name++;
    end = name + strlen(name);
    while (end > name && isspace((unsigned char)end[-1]))
        *--end = '\0';
    if (!*name || set_str(g->name, NAME_LEN, name))
        return "GPU name missing or too long";
    gpu_count++;
    return NULL;
}

static const char *parse_mig(char *rest)
{
    struct nvmlDevice_st *g, *m;
    char *uuid = next_token(&rest), *mem = next_token(&rest);
    char *profile = next_token(&rest);
    int n;

    if (!gpu_count)
        return "mig line before any gpu line";
    g = &gpus[gpu_count - 1];
    if (g->mig_current != MIG_ON)
        return "mig line under a GPU whose current MIG mode is not on";
    if (g->mig_count == MAX_MIG)
        return "too many MIG devices on one GPU";
    m = &g->migs[g->mig_count];
    memset(m, 0, sizeof(*m));
    m->is_mig = 1;
    m->index = g->mig_count;
    m->parent = g;
    m->mig_current = m->mig_pending = MIG_NONE;
    if (!uuid || strncmp(uuid, "MIG-", 4) || set_str(m->uuid, UUID_LEN, uuid))
        return "MIG uuid must look like MIG-...";
    if (parse_mib(mem, &m->memory))
        return "MIG memory must be a positive number of MiB";
    if (next_token(&rest))
        return "unexpected text after the MIG profile";
    /* Real NVML names MIG devices "<GPU name> MIG <profile>". */
    n = profile ? snprintf(m->name, NAME_LEN, "%s MIG %s", g->name, profile)
                : snprintf(m->name, NAME_LEN, "%s MIG", g->name);
    if (n < 0 || n >= NAME_LEN)
        return "MIG device name too long";
    g->mig_count++;
    return NULL;
}

/* Returns the NVML status init should give; prints why a config is bad. */
static nvmlReturn_t load_config(void)
{
    const char *path = getenv("FAKE_NVML_CONFIG");
    nvmlReturn_t status = NVML_SUCCESS;
    char line[512];
    unsigned lineno = 0;
    FILE *f;

    if (!path || !*path)
        path = "/etc/fake-nvml/config";
    gpu_count = 0;
    cuda_version = 12040;
    cuda_init_result = 0;
    set_str(driver_version, VERSION_LEN, "550.54.15");

    f = fopen(path, "r");
    if (!f)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    while (fgets(line, sizeof(line), f)) {
        char *rest = line, *key, *value, *hash = strchr(line, '#');
        const char *err = NULL;

        lineno++;
        if (!strchr(line, '\n') && !feof(f))
            err = "line too long";
        if (hash)
            *hash = '\0';
        if (err) {
            /* reported below */
        } else if (!(key = next_token(&rest))) {
            continue;
        } else if (!strcmp(key, "gpu")) {
            err = parse_gpu(rest);
        } else if (!strcmp(key, "mig")) {
            err = parse_mig(rest);
        } else if (!(value = next_token(&rest)) || next_token(&rest)) {
            err = "expected exactly one value";
        } else if (!strcmp(key, "driver")) {
            if (set_str(driver_version, VERSION_LEN, value))
                err = "driver version too long";
        } else if (!strcmp(key, "cuda")) {
            char *end;
            long v = strtol(value, &end, 10);
            if (*end || v <= 0 || v > 1000000)
                err = "cuda version must be a number like 12040";
            cuda_version = (int)v;
        } else if (!strcmp(key, "cuda-init")) {
            char *end;
            long v = strtol(value, &end, 10);
            if (*end || v < 0 || v > 100000)
                err = "cuda-init must be a CUresult, e.g. 802";
            cuda_init_result = (int)v;
        } else if (!strcmp(key, "mode")) {
            if (!strcmp(value, "ok"))
                status = NVML_SUCCESS;
            else if (!strcmp(value, "driver-not-loaded"))
                status = NVML_ERROR_DRIVER_NOT_LOADED;
            else if (!strcmp(value, "no-permission"))
                status = NVML_ERROR_NO_PERMISSION;
            else if (!strcmp(value, "version-mismatch"))
                status = NVML_ERROR_LIB_RM_VERSION_MISMATCH;
            else
                err = "unknown mode";
        } else {
            err = "unknown keyword";
        }
        if (err) {
            fprintf(stderr, "fake-nvml: %s:%u: %s\n", path, lineno, err);
            status = NVML_ERROR_UNKNOWN;
            break;
        }
    }
    fclose(f);
    if (status != NVML_SUCCESS)
        gpu_count = 0;
    return status;
}

/* ---- helpers --------------------------------------------------------- */

static int ready(void)
{
    int ok;
    pthread_mutex_lock(&lock);
    ok = init_count > 0;
    pthread_mutex_unlock(&lock);
    return ok;
}

/* Only handles we gave out are valid; anything else is a caller bug. */
static int valid(nvmlDevice_t d)
{
    unsigned i;
    for (i = 0; i < gpu_count; i++) {
        if (d == &gpus[i])
            return 1;
        if (d >= gpus[i].migs && d < gpus[i].migs + gpus[i].mig_count)
            return 1;
    }
    return 0;
}

/* ---- faults ---------------------------------------------------------- */

static const char *faults_path(void)
{
    const char *path = getenv("FAKE_NVML_FAULTS");
    return path && *path ? path : "/etc/fake-nvml/faults";
}

/* Whether the faults file has the line "<kind> <uuid>" (extra words after
   the uuid allowed). */
static int fault(const char *kind, const char *uuid)
{
    char line[256];
    int found = 0;
    FILE *f = fopen(faults_path(), "r");
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char *rest = line, *k, *u;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        k = next_token(&rest);
        u = k ? next_token(&rest) : NULL;
        found = k && u && !strcmp(k, kind) && !strcmp(u, uuid);
    }
    fclose(f);
    return found;
}

/* The xid lines of the faults file: how many there are; the `want`th
   (0-based) copied out when there is one. */
static unsigned xid_line(unsigned want, char *uuid, size_t size, unsigned long long *xid)
{
    char line[256];
    unsigned n = 0;
    FILE *f = fopen(faults_path(), "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        char *rest = line, *k, *u, *x, *end;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        if (!(k = next_token(&rest)) || strcmp(k, "xid") || !(u = next_token(&rest)) ||
            !(x = next_token(&rest)))
            continue;
        if (n == want && uuid) {
            snprintf(uuid, size, "%s", u);
            *xid = strtoull(x, &end, 10);
        }
        n++;
    }
    fclose(f);
    return n;
}

static int lost(nvmlDevice_t d)
{
    return fault("lost", (d->is_mig ? d->parent : d)->uuid);
}

#define CHECK_DEVICE(d)                                                        \
    do {                                                                       \
        if (!ready())                                                          \
            return NVML_ERROR_UNINITIALIZED;                                   \
        if (!valid(d))                                                         \
            return NVML_ERROR_INVALID_ARGUMENT;                                \
        if (lost(d))                                                           \
            return NVML_ERROR_GPU_IS_LOST;                                     \
    } while (0)

static nvmlReturn_t copy_out(char *dst, unsigned int size, const char *src)
{
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > size)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---- init ------------------------------------------------------------ */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t status = NVML_SUCCESS;
    (void)flags;
    pthread_mutex_lock(&lock);
    /* Like NVML, init is reference counted; the config is read once per
       first init so a test can change it between init/shutdown cycles. */
    if (init_count == 0)
        status = load_config();
    if (status == NVML_SUCCESS)
        init_count++;
    pthread_mutex_unlock(&lock);
    return status;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t status = NVML_SUCCESS;
    pthread_mutex_lock(&lock);
    if (init_count == 0)
        status = NVML_ERROR_UNINITIALIZED;
    else
        init_count--;
    pthread_mutex_unlock(&lock);
    return status;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
        return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* ---- system ---------------------------------------------------------- */

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, driver_version);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char buf[VERSION_LEN + 16];
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    /* NVML's own version is "<CUDA major>.<driver version>". */
    snprintf(buf, sizeof(buf), "%d.%s", cuda_version / 1000, driver_version);
    return copy_out(version, length, buf);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!version)
        return NVML_ERROR_INVALID_ARGUMENT;
    *version = cuda_version;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    return nvmlSystemGetCudaDriverVersion(version);
}

/* ---- devices --------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    return nvmlDeviceGetCount_v2(count);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index,
                                           nvmlDevice_t *device)
{
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index,
                                        nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    unsigned i, j;
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < gpu_count; i++) {
        if (!strcmp(gpus[i].uuid, uuid)) {
            *device = &gpus[i];
            return NVML_SUCCESS;
        }
        for (j = 0; j < gpus[i].mig_count; j++) {
            if (!strcmp(gpus[i].migs[j].uuid, uuid)) {
                *device = &gpus[i].migs[j];
                return NVML_SUCCESS;
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id,
                                              nvmlDevice_t *device)
{
    struct nvmlDevice_st want;
    unsigned i;
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!device || parse_bus_id(bus_id, &want))
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < gpu_count; i++) {
        if (gpus[i].domain == want.domain && gpus[i].bus == want.bus &&
            gpus[i].device == want.device &&
            gpus[i].function == want.function) {
            *device = &gpus[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    CHECK_DEVICE(device);
    if (!index)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* For MIG handles nvml.h defines this as the index under the parent. */
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid,
                               unsigned int length)
{
    CHECK_DEVICE(device);
    return copy_out(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name,
                               unsigned int length)
{
    CHECK_DEVICE(device);
    return copy_out(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    CHECK_DEVICE(device);
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->memory;
    memory->free = device->memory;
    memory->used = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device,
                                        nvmlMemory_v2_t *memory)
{
    CHECK_DEVICE(device);
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->memory;
    memory->reserved = 0;
    memory->free = device->memory;
    memory->used = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    CHECK_DEVICE(device);
    if (!pci)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof(*pci));
    pci->domain = device->domain;
    pci->bus = device->bus;
    pci->device = device->device;
    pci->pciDeviceId = 0x10DE; /* NVIDIA's PCI vendor id, low 16 bits */
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X",
             device->domain & 0xffff, device->bus, device->device,
             device->function);
    snprintf(pci->busId, sizeof(pci->busId), "%08X:%02X:%02X.%X",
             device->domain, device->bus, device->device, device->function);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device,
                                      unsigned int *minor)
{
    CHECK_DEVICE(device);
    if (!minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    /* /dev/nvidia<minor>; in the lab it matches the index. */
    *minor = device->index;
    return NVML_SUCCESS;
}

/* ---- MIG ------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending)
{
    CHECK_DEVICE(device);
    if (!current || !pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig || device->mig_current == MIG_NONE)
        return NVML_ERROR_NOT_SUPPORTED;
    *current = (unsigned)device->mig_current;
    *pending = (unsigned)device->mig_pending;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device,
                                            unsigned int *count)
{
    CHECK_DEVICE(device);
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    /* nvml.h: zero when MIG is not supported or not enabled. */
    *count = device->mig_current == MIG_ON ? MAX_MIG : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device,
                                                 unsigned int index,
                                                 nvmlDevice_t *mig)
{
    CHECK_DEVICE(device);
    if (!mig || device->is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->mig_current == MIG_NONE)
        return NVML_ERROR_NOT_SUPPORTED;
    if (index >= MAX_MIG)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= device->mig_count)
        return NVML_ERROR_NOT_FOUND;
    *mig = &device->migs[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device,
                                         unsigned int *is_mig)
{
    CHECK_DEVICE(device);
    if (!is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = (unsigned)device->is_mig;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig,
                                                          nvmlDevice_t *device)
{
    CHECK_DEVICE(mig);
    if (!device || !mig->is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = mig->parent;
    return NVML_SUCCESS;
}

/* ---- health: retired pages, row remapping, Xid events ---------------- */

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, int *pending)
{
    CHECK_DEVICE(device);
    if (!pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    *pending = fault("retired-pending", device->uuid); /* NVML_FEATURE_ENABLED is 1 */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corr, unsigned int *unc,
                                       unsigned int *pending, unsigned int *failure)
{
    CHECK_DEVICE(device);
    if (!corr || !unc || !pending || !failure)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    *pending = (unsigned)fault("remap-pending", device->uuid);
    *failure = (unsigned)fault("remap-failure", device->uuid);
    *corr = 0;
    *unc = *pending || *failure;
    return NVML_SUCCESS;
}

#define XID_CRITICAL_ERROR 0x8ULL /* nvmlEventTypeXidCriticalError */

struct nvmlEventSet_st {
    unsigned long long types[MAX_GPUS]; /* registered per GPU index */
    unsigned seen;                       /* xid lines already delivered */
};
typedef struct nvmlEventSet_st *nvmlEventSet_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    *set = calloc(1, sizeof(**set));
    if (!*set)
        return NVML_ERROR_UNKNOWN;
    /* Events from before the set existed are not delivered. */
    (*set)->seen = xid_line(0, NULL, 0, NULL);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    free(set);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types)
{
    CHECK_DEVICE(device);
    if (!types)
        return NVML_ERROR_INVALID_ARGUMENT;
    *types = device->is_mig ? 0 : XID_CRITICAL_ERROR;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set)
{
    CHECK_DEVICE(device);
    if (!set || device->is_mig)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~XID_CRITICAL_ERROR)
        return NVML_ERROR_NOT_SUPPORTED;
    set->types[device->index] |= types;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)
{
    unsigned waited = 0;
    if (!ready())
        return NVML_ERROR_UNINITIALIZED;
    if (!set || !data)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (;;) {
        char uuid[UUID_LEN];
        unsigned long long xid = 0;
        while (set->seen < xid_line(set->seen, uuid, sizeof(uuid), &xid)) {
            unsigned i;
            set->seen++;
            for (i = 0; i < gpu_count; i++) {
                if (!strcmp(gpus[i].uuid, uuid) && (set->types[i] & XID_CRITICAL_ERROR)) {
                    memset(data, 0, sizeof(*data));
                    data->device = &gpus[i];
                    data->eventType = XID_CRITICAL_ERROR;
                    data->eventData = xid;
                    return NVML_SUCCESS;
                }
            }
            /* an Xid of a GPU this set does not watch: skipped */
        }
        if (waited >= timeout_ms)
            return NVML_ERROR_TIMEOUT;
        {
            struct timespec step = {0, 20 * 1000 * 1000};
            nanosleep(&step, NULL);
        }
        waited += 20;
    }
}

nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)
{
    return nvmlEventSetWait_v2(set, data, timeout_ms);
}

/* ---- the CUDA driver API (as libcuda.so.1) ---------------------------- */

typedef int CUresult;

CUresult cuInit(unsigned int flags)
{
    nvmlReturn_t status = NVML_SUCCESS;
    CUresult result;
    (void)flags;
    pthread_mutex_lock(&lock);
    /* The config is NVML's while NVML is initialised; read it otherwise. */
    if (init_count == 0)
        status = load_config();
    if (status == NVML_ERROR_LIB_RM_VERSION_MISMATCH)
        result = 803;
    else if (status != NVML_SUCCESS)
        result = 100;
    else
        result = cuda_init_result;
    cuda_ready = result == 0;
    pthread_mutex_unlock(&lock);
    return result;
}

CUresult cuDeviceGetCount(int *count)
{
    CUresult result = 0;
    if (!count)
        return 1; /* CUDA_ERROR_INVALID_VALUE */
    pthread_mutex_lock(&lock);
    if (!cuda_ready)
        result = 3; /* CUDA_ERROR_NOT_INITIALIZED */
    else
        *count = (int)gpu_count;
    pthread_mutex_unlock(&lock);
    return result;
}

CUresult cuGetErrorName(CUresult error, const char **name)
{
    static const struct { CUresult code; const char *name; } names[] = {
        {0, "CUDA_SUCCESS"}, {1, "CUDA_ERROR_INVALID_VALUE"}, {3, "CUDA_ERROR_NOT_INITIALIZED"},
        {34, "CUDA_ERROR_STUB_LIBRARY"}, {35, "CUDA_ERROR_INSUFFICIENT_DRIVER"},
        {46, "CUDA_ERROR_DEVICE_UNAVAILABLE"}, {100, "CUDA_ERROR_NO_DEVICE"},
        {304, "CUDA_ERROR_OPERATING_SYSTEM"}, {802, "CUDA_ERROR_SYSTEM_NOT_READY"},
        {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"}, {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"},
        {999, "CUDA_ERROR_UNKNOWN"},
    };
    unsigned i;
    if (!name)
        return 1;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].code == error) {
            *name = names[i].name;
            return 0;
        }
    }
    *name = NULL;
    return 1;
}
