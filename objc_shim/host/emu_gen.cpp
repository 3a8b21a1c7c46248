/* emu_gen.cpp -- turns a .metal file into a C++ translation unit for the host
 * emulation: kernel parameter attributes are blanked out (positions kept, so
 * compiler messages point at the .metal lines), function constants become
 * per-pipeline values, and a launch thunk plus a parameter table are appended
 * for every `kernel` entry point. No hand-written glue per kernel. */
#include "emu_gen.h"

#include <cctype>
#include <cstdio>
#include <string>
#include <vector>

namespace {

/* A copy of src with comments and string/char literals replaced by spaces
 * (newlines kept): token searches run on it, edits apply to src. */
std::string mask_source(const std::string &s) {
    std::string m = s;
    size_t i = 0, n = s.size();
    while (i < n) {
        if (s.compare(i, 2, "//") == 0) {
            while (i < n && s[i] != '\n') m[i++] = ' ';
        } else if (s.compare(i, 2, "/*") == 0) {
            size_t e = s.find("*/", i + 2);
            e = e == std::string::npos ? n : e + 2;
            for (; i < e; i++)
                if (s[i] != '\n') m[i] = ' ';
        } else if (s[i] == '"' || s[i] == '\'') {
            char q = s[i];
            m[i++] = ' ';
            while (i < n && s[i] != q && s[i] != '\n') {
                if (s[i] == '\\' && i + 1 < n) m[i++] = ' ';
                m[i++] = ' ';
            }
            if (i < n && s[i] == q) m[i++] = ' ';
        } else {
            i++;
        }
    }
    return m;
}

bool ident_char(char c) { return std::isalnum((unsigned char)c) || c == '_'; }

/* position of the keyword `w` as a whole word at or after pos */
size_t find_word(const std::string &m, const std::string &w, size_t pos) {
    while ((pos = m.find(w, pos)) != std::string::npos) {
        bool l = pos == 0 || !ident_char(m[pos - 1]);
        bool r = pos + w.size() >= m.size() || !ident_char(m[pos + w.size()]);
        if (l && r) return pos;
        pos += w.size();
    }
    return std::string::npos;
}

size_t skip_ws(const std::string &m, size_t i) {
    while (i < m.size() && std::isspace((unsigned char)m[i])) i++;
    return i;
}

std::string read_ident(const std::string &m, size_t &i) {
    size_t b = i;
    while (i < m.size() && ident_char(m[i])) i++;
    return m.substr(b, i - b);
}

std::string trim(const std::string &s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace((unsigned char)s[b])) b++;
    while (e > b && std::isspace((unsigned char)s[e - 1])) e--;
    return s.substr(b, e - b);
}

int line_of(const std::string &s, size_t pos) {
    int line = 1;
    for (size_t i = 0; i < pos && i < s.size(); i++) line += s[i] == '\n';
    return line;
}

struct Param {
    std::string type, name, attr;
    int kind = 0;
    unsigned index = 0;
    int position = -1;
};

struct Kernel {
    std::string name;
    int line = 0;
    std::vector<Param> params;
};

const char *POSITIONS[] = {
    "thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
    "threads_per_threadgroup", "threadgroups_per_grid", "thread_index_in_threadgroup",
    "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup", "simdgroups_per_threadgroup",
    "threads_per_simdgroup", "threads_per_grid",
};

bool parse_attr(const std::string &attr, Param &p, std::string *err) {
    std::string a = trim(attr);
    size_t paren = a.find('(');
    std::string key = trim(a.substr(0, paren));
    if (key == "buffer" || key == "threadgroup") {
        if (paren == std::string::npos) {
            *err = "attribute [[" + a + "]] needs an index";
            return false;
        }
        p.index = (unsigned)std::strtoul(a.c_str() + paren + 1, nullptr, 0);
        if (p.index >= SC_EMU_MAX_BINDINGS) {
            *err = "binding index " + std::to_string(p.index) + " is over 30";
            return false;
        }
        if (key == "threadgroup") p.kind = SC_EMU_PARAM_THREADGROUP;
        else p.kind = p.type.find('*') != std::string::npos ? SC_EMU_PARAM_BUFFER : SC_EMU_PARAM_BUFFER_REF;
        return true;
    }
    for (int i = 0; i < (int)(sizeof POSITIONS / sizeof *POSITIONS); i++)
        if (key == POSITIONS[i]) {
            p.kind = SC_EMU_PARAM_POSITION;
            p.position = i;
            return true;
        }
    *err = "attribute [[" + a + "]] is not supported by the host emulation";
    return false;
}

int fc_type_code(const std::string &t) {
    if (t == "bool") return 0;
    if (t == "int") return 1;
    if (t == "uint" || t == "uint32_t") return 2;
    if (t == "float") return 3;
    if (t == "short") return 4;
    if (t == "ushort" || t == "uint16_t") return 5;
    return -1;
}

std::string c_string(const std::string &s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        o += c;
    }
    return o + "\"";
}

}  // namespace

bool sc_emu_generate(const std::string &src, const std::string &file, std::string *out, std::string *err) {
    std::string s = src;
    std::string m = mask_source(src);

    /* function constants: constant T name [[function_constant(i)]]; */
    size_t pos = 0;
    while ((pos = m.find("function_constant", pos)) != std::string::npos) {
        size_t open = m.rfind("[[", pos), close = m.find("]]", pos);
        size_t decl = find_word(m, "constant", m.rfind(';', open) == std::string::npos ? 0 : m.rfind(';', open));
        size_t semi = m.find(';', close);
        if (open == std::string::npos || close == std::string::npos || decl == std::string::npos ||
            semi == std::string::npos || decl > open) {
            *err = file + ":" + std::to_string(line_of(src, pos)) + ": cannot parse the function constant";
            return false;
        }
        size_t i = skip_ws(m, decl + 8);
        std::string type = read_ident(m, i);
        i = skip_ws(m, i);
        std::string name = read_ident(m, i);
        size_t ip = m.find('(', pos), ie = m.rfind(')', close);
        std::string index = trim(s.substr(ip + 1, ie - ip - 1));
        int code = fc_type_code(type);
        if (code < 0 || name.empty()) {
            *err = file + ":" + std::to_string(line_of(src, pos)) + ": function constant type '" + type +
                   "' is not supported (bool, int, uint, float, short, ushort)";
            return false;
        }
        /* one line, same length or longer: an object that reads the pipeline's value */
        std::string rep = "static const sc_emu_fc<" + type + ", (" + index + "), " + std::to_string(code) + "> " +
                          name + ";";
        std::string old = s.substr(decl, semi + 1 - decl);
        std::string keep_lines;
        for (char c : old)
            if (c == '\n') keep_lines += '\n';
        s.replace(decl, semi + 1 - decl, rep + keep_lines);
        m.replace(decl, semi + 1 - decl, std::string(rep.size(), ' ') + keep_lines);
        pos = decl + rep.size();
    }

    /* kernels */
    std::vector<Kernel> kernels;
    pos = 0;
    while ((pos = find_word(m, "kernel", pos)) != std::string::npos) {
        size_t i = skip_ws(m, pos + 6);
        size_t save = i;
        std::string v = read_ident(m, i);
        if (v != "void") { pos = save; continue; }
        i = skip_ws(m, i);
        Kernel k;
        k.name = read_ident(m, i);
        k.line = line_of(src, pos);
        i = skip_ws(m, i);
        if (k.name.empty() || i >= m.size() || m[i] != '(') { pos = i; continue; }
        size_t open = i;
        int depth = 0;
        size_t close = std::string::npos;
        for (size_t j = open; j < m.size(); j++) {
            if (m[j] == '(') depth++;
            else if (m[j] == ')' && --depth == 0) { close = j; break; }
        }
        if (close == std::string::npos) {
            *err = file + ":" + std::to_string(k.line) + ": unbalanced parameter list of kernel " + k.name;
            return false;
        }
        /* split by top-level commas */
        std::vector<std::pair<size_t, size_t>> parts;
        size_t b = open + 1;
        int d = 0, br = 0;
        for (size_t j = open + 1; j <= close; j++) {
            char c = m[j];
            if (c == '(' || c == '<') d++;
            else if ((c == ')' || c == '>') && j != close) d--;
            else if (c == '[') br++;
            else if (c == ']') br--;
            if ((c == ',' && d == 0 && br == 0) || j == close) {
                parts.push_back({b, j});
                b = j + 1;
            }
        }
        for (auto &pr : parts) {
            std::string text = s.substr(pr.first, pr.second - pr.first);
            if (trim(text).empty()) continue;
            Param p;
            size_t a0 = text.find("[["), a1 = text.find("]]");
            std::string decl = text;
            if (a0 != std::string::npos && a1 != std::string::npos) {
                p.attr = text.substr(a0 + 2, a1 - a0 - 2);
                decl = text.substr(0, a0) + text.substr(a1 + 2);
                /* blank the attribute in the emitted source */
                for (size_t j = pr.first + a0; j < pr.first + a1 + 2; j++)
                    if (s[j] != '\n') s[j] = ' ';
            }
            decl = trim(decl);
            size_t e = decl.size();
            while (e > 0 && ident_char(decl[e - 1])) e--;
            p.name = decl.substr(e);
            p.type = trim(decl.substr(0, e));
            if (p.attr.empty()) {
                *err = file + ":" + std::to_string(k.line) + ": kernel " + k.name + " parameter '" + p.name +
                       "' has no [[buffer(n)]], [[threadgroup(n)]] or position attribute";
                return false;
            }
            std::string perr;
            if (!parse_attr(p.attr, p, &perr)) {
                *err = file + ":" + std::to_string(k.line) + ": kernel " + k.name + " parameter '" + p.name +
                       "': " + perr;
                return false;
            }
            k.params.push_back(p);
        }
        kernels.push_back(k);
        pos = close;
    }

    std::string o;
    o += "#line 1 " + c_string(file) + "\n";
    o += s;
    o += "\n#line 1 " + c_string(file + " (generated launch thunks)") + "\n";
    o += "extern \"C\" { const sc_emu_api *sc_emu_rt = nullptr; }\n";
    for (const Kernel &k : kernels) {
        o += "static void sc_emu_thunk_" + k.name + "() {\n";
        o += "    const sc_emu_launch *L = sc_emu_rt->launch();\n    (void)L;\n";
        o += "    const sc_emu_thread *T = sc_emu_rt->self();\n    (void)T;\n";
        o += "    " + k.name + "(";
        for (size_t i = 0; i < k.params.size(); i++) {
            const Param &p = k.params[i];
            std::string idx = std::to_string(p.index);
            if (i) o += ",\n        ";
            if (p.kind == SC_EMU_PARAM_BUFFER) o += "(" + p.type + ")L->buffers[" + idx + "].ptr";
            else if (p.kind == SC_EMU_PARAM_BUFFER_REF)
                o += "*(std::remove_cv_t<std::remove_reference_t<" + p.type + ">> *)L->buffers[" + idx + "].ptr";
            else if (p.kind == SC_EMU_PARAM_THREADGROUP) o += "(" + p.type + ")L->tgmem[" + idx + "].ptr";
            else o += "sc_emu_position<" + p.type + ">(T, " + std::to_string(p.position) + ")";
        }
        o += ");\n}\n";
        o += "static const sc_emu_param sc_emu_params_" + k.name + "[] = {\n";
        for (const Param &p : k.params) {
            std::string size = p.kind == SC_EMU_PARAM_BUFFER_REF
                                   ? "sizeof(std::remove_cv_t<std::remove_reference_t<" + p.type + ">>)"
                                   : "0";
            o += "    {" + c_string(p.name) + ", " + std::to_string(p.kind) + ", " + std::to_string(p.index) +
                 ", " + size + "},\n";
        }
        if (k.params.empty()) o += "    {\"\", 0, 0, 0},\n";
        o += "};\n";
    }
    o += "extern \"C\" {\nextern const sc_emu_kernel sc_emu_kernels[];\nint sc_emu_module_init(const sc_emu_api *api);\n";
    o += "const sc_emu_kernel sc_emu_kernels[] = {\n";
    for (const Kernel &k : kernels)
        o += "    {" + c_string(k.name) + ", sc_emu_thunk_" + k.name + ", sc_emu_params_" + k.name + ", " +
             std::to_string(k.params.size()) + ", " + c_string(file) + ", " + std::to_string(k.line) + "},\n";
    o += "    {nullptr, nullptr, nullptr, 0, nullptr, 0}\n};\n";
    o += "int sc_emu_module_init(const sc_emu_api *api) {\n    sc_emu_rt = api;\n    return SC_EMU_ABI_VERSION;\n}\n}\n";
    *out = o;
    return true;
}
