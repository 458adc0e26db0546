/*
 * An NVTX tool for tests/nvtx.rs. It attaches to a program's NVTX loader the way a profiler's
 * injection library does, written against the official headers (nvidia-nvtx, nvtx3/) with
 * NVTX_NO_IMPL, as the headers ask of tools: their types, export-table ids, module ids and
 * callback ids, nothing restated. It checks what a strict tool may rely on (the export tables'
 * sizes and version, each module's table laid out as the headers' own loader lays it out),
 * records every range pushed and popped, and exports what it saw.
 *
 * The test builds it:  cc -shared -fPIC -I<dir holding nvtx3/> nvtx_probe.c -o libnvtx_probe.so
 * With NVTX_PROBE_REFUSE set in the environment its entry point fills the slots and then
 * returns 0, as a tool that fails to initialise.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* One line per event, "<thread> push <name>" or "<thread> pop", threads numbered from 0 in
 * the order of their first event. */
static char *events;
static size_t events_len, events_cap;
static int threads;
static int initialized;
static char failure[512];

/* The events so far, as a malloc'd string the caller frees. */
char *nvtx_probe_events(void) {
    pthread_mutex_lock(&lock);
    char *copy = strdup(events ? events : "");
    pthread_mutex_unlock(&lock);
    return copy;
}

/* How many times the entry point ran. */
int nvtx_probe_initialized(void) {
    return initialized;
}

/* Why the entry point refused the loader, or "". */
const char *nvtx_probe_failure(void) {
    return failure;
}

static __thread int thread_number = -1;
/* The thread's open ranges: what nvtxRangePushA and nvtxRangePop return (the level). */
static __thread int depth;

static void append(const char *text) {
    size_t n = strlen(text);
    if (events_len + n + 1 > events_cap) {
        events_cap = 2 * (events_len + n + 1);
        events = realloc(events, events_cap);
    }
    memcpy(events + events_len, text, n + 1);
    events_len += n;
}

static void record(const char *kind, const char *name) {
    char head[32];
    pthread_mutex_lock(&lock);
    if (thread_number < 0) {
        thread_number = threads++;
    }
    snprintf(head, sizeof head, "%d %s", thread_number, kind);
    append(head);
    if (name) {
        append(" ");
        append(name);
    }
    append("\n");
    pthread_mutex_unlock(&lock);
}

static int NVTX_API probe_range_push_a(const char *message) {
    record("push", message);
    return depth++;
}

static int NVTX_API probe_range_pop(void) {
    record("pop", NULL);
    return depth > 0 ? --depth : -1;
}

#define FAIL(...)                                            \
    do {                                                     \
        snprintf(failure, sizeof failure, __VA_ARGS__);      \
        return 0;                                            \
    } while (0)

/* Each module's number of callback ids, which the headers' loader reports as its size. */
static unsigned int module_size(NvtxCallbackModule module) {
    switch (module) {
    case NVTX_CB_MODULE_CORE: return NVTX_CBID_CORE_SIZE;
    case NVTX_CB_MODULE_CUDA: return NVTX_CBID_CUDA_SIZE;
    case NVTX_CB_MODULE_OPENCL: return NVTX_CBID_OPENCL_SIZE;
    case NVTX_CB_MODULE_CUDART: return NVTX_CBID_CUDART_SIZE;
    case NVTX_CB_MODULE_CORE2: return NVTX_CBID_CORE2_SIZE;
    case NVTX_CB_MODULE_SYNC: return NVTX_CBID_SYNC_SIZE;
    default: return 0;
    }
}

/* A slot filler for the callbacks this probe does not implement; never called. */
static void NVTX_API unused_callback(void) {}

NVTX_DECLSPEC int NVTX_API InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_export_table) {
    initialized++;
    if (!get_export_table) FAIL("no GetExportTable");

    const NvtxExportTableCallbacks *callbacks = get_export_table(NVTX_ETID_CALLBACKS);
    if (!callbacks) FAIL("no callbacks export table");
    if (callbacks->struct_size < sizeof(NvtxExportTableCallbacks))
        FAIL("callbacks table of %zu bytes, %zu expected", callbacks->struct_size, sizeof(NvtxExportTableCallbacks));
    if (!callbacks->GetModuleFunctionTable) FAIL("no GetModuleFunctionTable");

    const NvtxExportTableVersionInfo *version = get_export_table(NVTX_ETID_VERSIONINFO);
    if (!version) FAIL("no version export table");
    if (version->struct_size < sizeof(NvtxExportTableVersionInfo))
        FAIL("version table of %zu bytes, %zu expected", version->struct_size, sizeof(NvtxExportTableVersionInfo));
    if (version->version != NVTX_VERSION) FAIL("NVTX version %u, %u expected", version->version, NVTX_VERSION);
    if (!version->SetInjectionNvtxVersion) FAIL("no SetInjectionNvtxVersion");
    version->SetInjectionNvtxVersion(NVTX_VERSION);

    if (get_export_table(NVTX_ETID_INVALID) || get_export_table(NVTX_ETID_RESERVED0) || get_export_table(NVTX_ETID_SIZE))
        FAIL("an export table for an id the headers give none");
    if (callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_INVALID, NULL, NULL) ||
        callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_SIZE, NULL, NULL))
        FAIL("a function table for a module the headers do not have");
    if (!callbacks->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, NULL, NULL))
        FAIL("GetModuleFunctionTable refuses null output pointers");

    /* Every module's slots, as a tool that handles all of them fills them: each must be its
     * own, so no write lands in another callback's slot. */
    NvtxFunctionPointer *seen[NVTX_CB_MODULE_SIZE * 32];
    size_t count = 0;
    NvtxFunctionTable core = NULL;
    for (int m = NVTX_CB_MODULE_CORE; m < NVTX_CB_MODULE_SIZE; m++) {
        NvtxFunctionTable table = NULL;
        unsigned int size = 0;
        if (!callbacks->GetModuleFunctionTable((NvtxCallbackModule)m, &table, &size) || !table)
            FAIL("no function table for module %d", m);
        if (size != module_size((NvtxCallbackModule)m))
            FAIL("module %d: a table of size %u, the headers' is %u", m, size, module_size((NvtxCallbackModule)m));
        if (table[0] || table[size]) FAIL("module %d: entry 0 or entry %u (the end) is not null", m, size);
        for (unsigned int id = 1; id < size; id++) {
            if (!table[id]) FAIL("module %d: no slot for callback %u", m, id);
            for (size_t i = 0; i < count; i++)
                if (seen[i] == table[id]) FAIL("module %d: callback %u shares a slot", m, id);
            seen[count++] = table[id];
            *table[id] = unused_callback;
        }
        if (m == NVTX_CB_MODULE_CORE) core = table;
    }
    *core[NVTX_CBID_CORE_RangePushA] = (NvtxFunctionPointer)probe_range_push_a;
    *core[NVTX_CBID_CORE_RangePop] = (NvtxFunctionPointer)probe_range_pop;

    if (getenv("NVTX_PROBE_REFUSE")) FAIL("refused, as asked by NVTX_PROBE_REFUSE");
    return 1;
}
