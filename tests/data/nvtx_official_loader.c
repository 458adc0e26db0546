/*
 * A program on the official NVTX headers' own loader (nvtx3/nvToolsExt.h, header-only), for
 * tests/nvtx.rs: it pushes and pops two ranges, then prints what the probe tool it was run with
 * (NVTX_INJECTION64_PATH, and its path as the argument) recorded. The probe that passes here is
 * the one the test then attaches to msclip's loader, so the probe's checks are calibrated
 * against the headers' loader.
 */
#include <nvtx3/nvToolsExt.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PROBE.so\n", argv[0]);
        return 2;
    }
    nvtxRangePushA("outer");
    nvtxRangePushA("inner");
    nvtxRangePop();
    nvtxRangePop();

    void *probe = dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD);
    if (!probe) {
        fprintf(stderr, "the NVTX loader did not load %s\n", argv[1]);
        return 1;
    }
    char *(*events)(void) = (char *(*)(void))dlsym(probe, "nvtx_probe_events");
    const char *(*failure)(void) = (const char *(*)(void))dlsym(probe, "nvtx_probe_failure");
    if (!events || !failure) {
        fprintf(stderr, "%s is not the probe\n", argv[1]);
        return 1;
    }
    if (failure()[0]) {
        fprintf(stderr, "the probe refused the loader: %s\n", failure());
        return 1;
    }
    char *text = events();
    fputs(text, stdout);
    free(text);
    return 0;
}
