// The sanitizer's map of memory (memory_map.h) and the C functions the Rust driver reports
// allocations, frees and host writes through.
#include "memory_map.h"

#include <cxxabi.h>
#include <elf.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <map>

// The one TLS symbol whose address is known at run time: every other static __shared__ variable
// is found at the same distance from it as in the symbol table (one TLS block per thread).
extern "C" thread_local char msclip_checked_tls_anchor;
thread_local char msclip_checked_tls_anchor;

namespace emu {

namespace {

constexpr size_t kFreedKept = 4096;

struct Registry {
    std::mutex mutex;
    std::map<uintptr_t, Allocation> live;
    std::deque<FreedRange> freed;
    uint64_t next_id = 1;
};

Registry& registry() {
    // Never destroyed: frees may arrive while static destructors run.
    static Registry* r = new Registry;
    return *r;
}

// A static __shared__ variable as the symbol table gives it: an offset into the TLS block.
struct TlsSymbol {
    uint64_t offset;
    uint64_t bytes;
    bool redzone;
    std::string name;
};

std::string readable_name(const char* mangled) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
    std::free(demangled);
    return without_copy_names(name);
}

}  // namespace

std::string without_copy_names(std::string name) {
    // "msclip_checked_<module>::" and "__instrumented" say only which copy it is.
    for (size_t at; (at = name.find("__instrumented")) != std::string::npos;) name.erase(at, 14);
    const std::string prefix = "msclip_checked_";
    for (size_t at; (at = name.find(prefix)) != std::string::npos;) {
        const size_t end = name.find("::", at);
        if (end == std::string::npos) break;
        name.erase(at, end + 2 - at);
    }
    return name;
}

namespace {

// The TLS symbols of the instrumented copy (statics of functions in its msclip_checked_<module>
// namespaces or of its renamed `<kernel>__instrumented` entry points) and the anchor's offset,
// from /proc/self/exe's .symtab. Empty when the table was stripped.
std::vector<TlsSymbol> read_tls_symbols(uint64_t* anchor_offset) {
    std::ifstream file("/proc/self/exe", std::ios::binary);
    std::vector<char> image((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    std::vector<TlsSymbol> symbols;
    if (image.size() < sizeof(Elf64_Ehdr)) return symbols;
    Elf64_Ehdr header;
    std::memcpy(&header, image.data(), sizeof header);
    if (std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64) return symbols;
    auto section = [&](size_t i) {
        Elf64_Shdr s;
        std::memcpy(&s, image.data() + header.e_shoff + i * header.e_shentsize, sizeof s);
        return s;
    };
    for (size_t i = 0; i < header.e_shnum; ++i) {
        const Elf64_Shdr table = section(i);
        if (table.sh_type != SHT_SYMTAB) continue;
        const Elf64_Shdr strings = section(table.sh_link);
        const size_t count = table.sh_size / sizeof(Elf64_Sym);
        for (size_t k = 0; k < count; ++k) {
            Elf64_Sym sym;
            std::memcpy(&sym, image.data() + table.sh_offset + k * sizeof(Elf64_Sym), sizeof sym);
            if (ELF64_ST_TYPE(sym.st_info) != STT_TLS) continue;
            const char* name = image.data() + strings.sh_offset + sym.st_name;
            if (std::strcmp(name, "msclip_checked_tls_anchor") == 0) {
                *anchor_offset = sym.st_value;
            } else if ((std::strstr(name, "msclip_checked_") != nullptr || std::strstr(name, "__instrumented") != nullptr) &&
                       sym.st_size > 0) {
                symbols.push_back(
                    TlsSymbol{sym.st_value, sym.st_size, std::strstr(name, "msclip_redzone_") != nullptr,
                              readable_name(name)});
            }
        }
    }
    std::sort(symbols.begin(), symbols.end(), [](const TlsSymbol& a, const TlsSymbol& b) { return a.offset < b.offset; });
    return symbols;
}

const std::vector<TlsSymbol>& tls_symbols(uint64_t* anchor_offset) {
    static uint64_t anchor = 0;
    static const std::vector<TlsSymbol> symbols = read_tls_symbols(&anchor);
    *anchor_offset = anchor;
    return symbols;
}

}  // namespace

bool Allocation::is_written(uintptr_t address, size_t len) const {
    if (written.empty()) return true;
    for (size_t i = address - base, end = i + len; i < end; ++i) {
        if ((written[i / 64] >> (i % 64) & 1u) == 0) return false;
    }
    return true;
}

void Allocation::mark_written(uintptr_t address, size_t len) {
    if (written.empty()) return;
    for (size_t i = address - base, end = i + len; i < end; ++i) written[i / 64] |= uint64_t{1} << (i % 64);
}

Cell* Allocation::cells_for_race_checks() {
    if (!cells) cells.reset(new Cell[(bytes + 3) / 4]());
    return cells.get();
}

std::mutex& memory_map_mutex() { return registry().mutex; }

Allocation* find_allocation(uintptr_t address) {
    auto& live = registry().live;
    auto it = live.upper_bound(address);
    if (it == live.begin()) return nullptr;
    --it;
    Allocation& a = it->second;
    return address < a.base + a.bytes ? &a : nullptr;
}

std::string describe_nearest(uintptr_t address) {
    Registry& r = registry();
    char text[200];
    // A freed range that a live allocation now overlaps was handed out again: an address in it
    // belongs to the newer allocation's story (past its end, say), not to a use after free.
    // Live allocations never overlap, so the last one starting before the range's end decides.
    auto reused = [&](const FreedRange& f) {
        auto it = r.live.lower_bound(f.base + f.bytes);
        if (it == r.live.begin()) return false;
        --it;
        return it->second.base + it->second.bytes > f.base;
    };
    for (auto it = r.freed.rbegin(); it != r.freed.rend(); ++it) {
        if (address >= it->base && address < it->base + it->bytes && !reused(*it)) {
            std::snprintf(text, sizeof text, "inside allocation #%llu (%zu bytes at 0x%zx), already freed: a use after free",
                          static_cast<unsigned long long>(it->id), it->bytes, static_cast<size_t>(it->base));
            return text;
        }
    }
    const Allocation* best = nullptr;
    uintptr_t best_distance = UINTPTR_MAX;
    for (const auto& [base, a] : r.live) {
        const uintptr_t distance = address < a.base ? a.base - address : address - (a.base + a.bytes) + 1;
        if (distance < best_distance) {
            best_distance = distance;
            best = &a;
        }
    }
    if (best == nullptr) return "no live allocation";
    if (address < best->base) {
        std::snprintf(text, sizeof text, "%zu bytes before allocation #%llu (%zu bytes at 0x%zx)",
                      static_cast<size_t>(best->base - address), static_cast<unsigned long long>(best->id),
                      best->bytes, static_cast<size_t>(best->base));
    } else {
        std::snprintf(text, sizeof text, "at offset %zu of allocation #%llu, past the end of its %zu bytes (at 0x%zx)",
                      static_cast<size_t>(address - best->base), static_cast<unsigned long long>(best->id),
                      best->bytes, static_cast<size_t>(best->base));
    }
    return text;
}

const std::vector<StaticShared>& static_shared_variables() {
    thread_local std::vector<StaticShared> variables;
    thread_local bool built = false;
    if (!built) {
        built = true;
        uint64_t anchor_offset = 0;
        const auto& symbols = tls_symbols(&anchor_offset);
        const uintptr_t bias = reinterpret_cast<uintptr_t>(&msclip_checked_tls_anchor) - anchor_offset;
        for (const TlsSymbol& s : symbols) variables.push_back(StaticShared{bias + s.offset, s.bytes, s.redzone, s.name});
    }
    return variables;
}

const StaticShared* find_static_shared(uintptr_t address, bool* inside_span) {
    const auto& vars = static_shared_variables();
    *inside_span = !vars.empty() && address >= vars.front().base && address < vars.back().base + vars.back().bytes;
    if (!*inside_span) return nullptr;
    auto it = std::upper_bound(vars.begin(), vars.end(), address,
                               [](uintptr_t a, const StaticShared& v) { return a < v.base; });
    if (it == vars.begin()) return nullptr;
    --it;
    return address < it->base + it->bytes ? &*it : nullptr;
}

}  // namespace emu

// ---- Notes from the Rust driver (src/backend/gpu/emu.rs). ----

// `tracked`: the allocation is made for the sanitizer, which then sees every write to it, so its
// unwritten bytes can be told apart.
extern "C" void msclip_emu_note_alloc(uintptr_t base, size_t bytes, int tracked) {
    emu::Registry& r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    emu::Allocation a;
    a.base = base;
    a.bytes = bytes;
    a.id = r.next_id++;
    if (tracked) a.written.assign((bytes + 63) / 64, 0);
    r.live[base] = std::move(a);
}

extern "C" void msclip_emu_note_free(uintptr_t base) {
    emu::Registry& r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.live.find(base);
    if (it == r.live.end()) return;
    r.freed.push_back(emu::FreedRange{base, it->second.bytes, it->second.id});
    if (r.freed.size() > emu::kFreedKept) r.freed.pop_front();
    r.live.erase(it);
}

extern "C" void msclip_emu_note_written(uintptr_t base, size_t bytes) {
    emu::Registry& r = emu::registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    if (emu::Allocation* a = emu::find_allocation(base)) {
        a->mark_written(base, std::min(bytes, a->base + a->bytes - base));
    }
}
