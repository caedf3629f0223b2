/*  config.h: ferry's configuration, one YAML file for every daemon
    (docs/configuration.md is the reference), read with libyaml.

    The file becomes a tree of nodes (maps, sequences, scalars) that keep
    the line they came from, so every error names file, line and key:
    "etc/ferry.yaml:12: edge.routes[2].timeout: expected a duration".
    Command-line overrides (--set PATH=VALUE and the per-daemon flags) are
    applied on top and are reported as "command line" instead of a line.
    Getters mark the nodes they read; ferry_config_check_unused reports the
    first key nobody read, which catches typos.

    Paths are dotted keys with [N] for sequence items: "edge.routes[0].path";
    a NULL or "" path names the base node itself.
    A getter whose node is absent stores the default and returns 0; one
    whose node has the wrong type or is out of range returns -1 and leaves
    the message in ferry_config_error.  A YAML null (an empty value, "~",
    unquoted "null") counts as absent.

    "Read" means: ferry_config_node and the getters mark the node they find
    and every node on the way to it; ferry_cnode_child marks the child it
    returns and ferry_cnode_value the scalar.  A configuration belongs to
    one thread.  */

#ifndef FERRY_CONFIG_H_INCLUDED
#define FERRY_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _ferry_config_t ferry_config_t;
typedef struct _ferry_cnode_t ferry_cnode_t;

typedef enum {
    FERRY_CNODE_SCALAR = 1,
    FERRY_CNODE_MAP = 2,
    FERRY_CNODE_SEQ = 3
} ferry_cnode_type_t;

/*  An empty configuration (every getter returns its default).  */
ferry_config_t *ferry_config_new (void);
/*  Loads a YAML file.  Returns NULL with "file:line: message" in err.  */
ferry_config_t *ferry_config_load (const char *path, char *err, size_t errlen);
/*  Parses YAML text; name stands for the file in messages.  */
ferry_config_t *ferry_config_parse (const char *text, size_t len,
                                    const char *name, char *err,
                                    size_t errlen);
void ferry_config_destroy (ferry_config_t **self_p);

/*  Applies "PATH=VALUE": creates the scalar (and maps on the way) or
    replaces it.  VALUE is one YAML scalar, or a YAML flow collection such as
    "[a, b]" or "{k: v}"; an empty VALUE is the empty string.  "[N]" may
    name an existing item or append one (N == size).  Returns 0, or -1 (see
    ferry_config_error).  The replaced node and the strings read from it
    are freed: apply overrides before reading.  */
int ferry_config_set (ferry_config_t *self, const char *assignment);

/*  The message of the last failed call, "" if none.  */
const char *ferry_config_error (const ferry_config_t *self);
/*  The file the configuration came from, or "(none)".  */
const char *ferry_config_source (const ferry_config_t *self);

/* ---- nodes (borrowed pointers, valid while the config lives) -------------- */
const ferry_cnode_t *ferry_config_root (const ferry_config_t *self);
/*  The node at path below node (NULL node = root), or NULL.  Marks it read. */
const ferry_cnode_t *ferry_config_node (const ferry_config_t *self,
                                        const ferry_cnode_t *node,
                                        const char *path);
ferry_cnode_type_t ferry_cnode_type (const ferry_cnode_t *node);
/*  Map entries and sequence items, in file order.  */
size_t ferry_cnode_size (const ferry_cnode_t *node);
const ferry_cnode_t *ferry_cnode_child (const ferry_cnode_t *node, size_t i);
/*  The key of a map entry (NULL for sequence items and the root).  */
const char *ferry_cnode_key (const ferry_cnode_t *node);
/*  The text of a scalar (NULL for maps and sequences).  Marks it read.  */
const char *ferry_cnode_value (const ferry_cnode_t *node);
/*  Line in the file (1-based), 0 when it came from the command line.  */
size_t ferry_cnode_line (const ferry_cnode_t *node);
/*  The full dotted path of the node, e.g. "edge.routes[2].timeout".  */
const char *ferry_cnode_path (const ferry_cnode_t *node);

/* ---- typed getters --------------------------------------------------------
    base may be NULL (root).  Each returns 0 (found, or absent: default
    stored) or -1 (wrong type or out of range; message set).  */
int ferry_config_str (ferry_config_t *self, const ferry_cnode_t *base,
                      const char *path, const char *dflt, const char **out);
int ferry_config_int (ferry_config_t *self, const ferry_cnode_t *base,
                      const char *path, int64_t min, int64_t max,
                      int64_t dflt, int64_t *out);
int ferry_config_bool (ferry_config_t *self, const ferry_cnode_t *base,
                       const char *path, bool dflt, bool *out);
/*  "250ms", "5s", "2m", "1h", or a bare number of milliseconds.  */
int ferry_config_duration_ms (ferry_config_t *self, const ferry_cnode_t *base,
                              const char *path, int64_t min_ms,
                              int64_t max_ms, int64_t dflt_ms, int64_t *out);
/*  "512", "64KiB", "1MiB", "2GiB" (also KB/MB/GB as powers of 1000).  */
int ferry_config_size (ferry_config_t *self, const ferry_cnode_t *base,
                       const char *path, uint64_t min, uint64_t max,
                       uint64_t dflt, uint64_t *out);

/*  Sets an error about node ("file:line: path: message") for checks the
    caller makes itself; always returns -1 so callers can return it.  */
int ferry_config_fail (ferry_config_t *self, const ferry_cnode_t *node,
                       const char *fmt, ...)
    __attribute__ ((format (printf, 3, 4)));

/*  -1 with "file:line: key: unknown setting" for the first node below
    prefix (NULL = everything) that no getter read, 0 if all were read.  */
int ferry_config_check_unused (ferry_config_t *self, const char *prefix);

/* ---- command line ----------------------------------------------------------
    Every daemon takes: --config FILE (default $FERRY_CONFIG, else no file),
    --set PATH=VALUE (repeatable), its own flags (each one a shorthand for
    --set path=VALUE), --log-level LEVEL, --help, --version.  */
typedef struct {
    const char *flag; /* "listen" for --listen VALUE */
    const char *path; /* "edge.listen" */
    const char *help;
} ferry_flag_t;

/*  Returns 0 with *config_p set; 1 when --help or --version was printed
    (exit 0); -1 after printing the error to stderr (exit 2).  flags ends
    with {NULL}.  */
int ferry_cli_load (int argc, char **argv, const char *program,
                    const char *summary, const ferry_flag_t *flags,
                    ferry_config_t **config_p);

#endif
