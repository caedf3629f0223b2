/*  config.c: ferry's configuration, one YAML file for every daemon, plus
    the command line that every binary shares (ferry_cli_load).

    libyaml's event parser turns the text into a small tree of our own
    nodes.  We keep our own tree rather than libyaml's document because
    every node needs what libyaml does not keep: its line (for messages), its
    full dotted path, and a flag saying whether anything read it, which is
    how ferry_config_check_unused finds misspelt keys.  The YAML subset is
    maps, sequences and scalars; anchors, aliases, tags and duplicate keys
    are refused, so the file means exactly what it shows.

    Command-line overrides (--set PATH=VALUE, per-daemon flags) edit the
    tree after the file is read.  Their nodes have line 0 and their errors
    read "command line: PATH: message".

    A configuration belongs to the thread that loads it; daemons read it at
    start-up, before their actors run, and then destroy it or keep it
    read-only.  docs/configuration.md is the reference for the format.  */

#include "ferry.h"
#include "config.h"

#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <yaml.h>

/*  Deeper nesting than this is refused: nothing in ferry needs more, and the
    builder recurses once per level.  */
#define S_MAX_DEPTH 64

/*  The "line" of messages about the whole file ("file: message").  */
#define S_NO_LINE SIZE_MAX

struct _ferry_cnode_t {
    ferry_cnode_type_t type;
    char *key;               /* key in the parent map, NULL otherwise */
    char *path;              /* full dotted path, "" for the root */
    char *value;             /* scalar text, NULL for maps and sequences */
    bool plain;              /* scalar written unquoted: may be a YAML null */
    size_t line;             /* 1-based line, 0 for the command line */
    bool read;               /* a getter or lookup used this node */
    ferry_cnode_t *parent;   /* NULL for the root */
    ferry_cnode_t **items;   /* map entries or sequence items, in order */
    size_t size;             /* items in use */
    size_t alloc;            /* items allocated */
};

struct _ferry_config_t {
    char *source;            /* file name for messages, "(none)" if no file */
    ferry_cnode_t *root;     /* always a map */
    char error[1024];        /* message of the last failed call */
};

/*  Indexed by ferry_cnode_type_t, for messages.  */
static const char *s_type_names[] = {"a scalar", "a scalar", "a map",
                                     "a sequence"};

/* ---- nodes --------------------------------------------------------------- */

/*  A new detached node; takes ownership of path.  */
static ferry_cnode_t *
s_node_new (ferry_cnode_type_t type, char *path, const char *key,
            size_t line)
{
    ferry_cnode_t *node = ferry_calloc (1, sizeof *node);
    node->type = type;
    node->path = path;
    node->key = key ? ferry_strdup (key) : NULL;
    node->line = line;
    return node;
}

static void
s_node_destroy (ferry_cnode_t **node_p)
{
    ferry_cnode_t *node = *node_p;
    if (!node)
        return;
    for (size_t i = 0; i < node->size; i++)
        s_node_destroy (&node->items[i]);
    free (node->items);
    free (node->key);
    free (node->path);
    free (node->value);
    free (node);
    *node_p = NULL;
}

static void
s_node_append (ferry_cnode_t *parent, ferry_cnode_t *child)
{
    if (parent->size == parent->alloc) {
        parent->alloc = parent->alloc ? parent->alloc * 2 : 4;
        parent->items = ferry_realloc (parent->items,
                                       parent->alloc * sizeof *parent->items);
    }
    parent->items[parent->size++] = child;
    child->parent = parent;
}

/*  The path of the map entry key (key_len bytes) below parent, or of
    sequence item index when key is NULL.  */
static char *
s_path_child (const char *parent, const char *key, size_t key_len,
              size_t index)
{
    size_t len = strlen (parent) + key_len + 24;
    char *path = ferry_malloc (len);
    if (key)
        snprintf (path, len, "%s%s%.*s", parent, *parent ? "." : "",
                  (int) key_len, key);
    else
        snprintf (path, len, "%s[%zu]", parent, index);
    return path;
}

/*  YAML reads an unquoted empty value, "~" and "null" as null.  Getters
    treat a null as absent, so "timeout:" with nothing after it means the
    default.  */
static bool
s_is_null (const ferry_cnode_t *node)
{
    return node->type == FERRY_CNODE_SCALAR && node->plain
           && (node->value[0] == '\0' || strcmp (node->value, "~") == 0
               || strcmp (node->value, "null") == 0
               || strcmp (node->value, "Null") == 0
               || strcmp (node->value, "NULL") == 0);
}

/*  Marks node and its ancestors read.  Every mark goes through here, so an
    already read node has read ancestors and the walk may stop there.  */
static void
s_mark (const ferry_cnode_t *cnode)
{
    //  Nodes are always allocated writable; the read flag is bookkeeping
    //  that the const in the public API does not cover.
    for (ferry_cnode_t *node = (ferry_cnode_t *) cnode; node && !node->read;
         node = node->parent)
        node->read = true;
}

/* ---- errors -------------------------------------------------------------- */

/*  Formats "SOURCE:LINE: PATH: message", "command line: PATH: message" for
    line 0, or "SOURCE: message" for S_NO_LINE; the path part is left out
    when path is empty.  Returns -1.  */
static int
s_vfail (ferry_config_t *self, size_t line, const char *path,
         const char *fmt, va_list args)
{
    char msg[768];
    vsnprintf (msg, sizeof msg, fmt, args);
    size_t size = sizeof self->error;
    int n = line == 0           ? snprintf (self->error, size, "command line")
            : line == S_NO_LINE ? snprintf (self->error, size, "%s",
                                            self->source)
                                : snprintf (self->error, size, "%s:%zu",
                                            self->source, line);
    if (n >= 0 && (size_t) n < size)
        snprintf (self->error + n, size - (size_t) n, ": %s%s%s",
                  path ? path : "", path && *path ? ": " : "", msg);
    return -1;
}

static int
s_fail (ferry_config_t *self, size_t line, const char *path,
        const char *fmt, ...) __attribute__ ((format (printf, 4, 5)));

static int
s_fail (ferry_config_t *self, size_t line, const char *path,
        const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    s_vfail (self, line, path, fmt, args);
    va_end (args);
    return -1;
}

int
ferry_config_fail (ferry_config_t *self, const ferry_cnode_t *node,
                   const char *fmt, ...)
{
    assert (self);
    va_list args;
    va_start (args, fmt);
    s_vfail (self, node ? node->line : S_NO_LINE, node ? node->path : "", fmt,
             args);
    va_end (args);
    return -1;
}

/* ---- building the tree from libyaml events ------------------------------- */

typedef struct {
    ferry_config_t *config;  /* where errors go */
    yaml_parser_t parser;
    bool cmdline;            /* nodes get line 0 (a --set value) */
    const char *where;       /* path named in syntax errors ("" for a file) */
} s_builder_t;

static size_t
s_line (const s_builder_t *b, const yaml_mark_t *mark)
{
    return b->cmdline ? 0 : mark->line + 1;
}

/*  Next event into ev.  On a syntax error sets the message and returns -1;
    ev then holds nothing to delete.  */
static int
s_next (s_builder_t *b, yaml_event_t *ev)
{
    if (yaml_parser_parse (&b->parser, ev))
        return 0;
    const yaml_parser_t *p = &b->parser;
    size_t line = s_line (b, &p->problem_mark);
    //  The context says what was open, and where, when that was earlier.
    size_t context_line = s_line (b, &p->context_mark);
    char context[256] = "";
    if (p->context && context_line && context_line != line)
        snprintf (context, sizeof context, " %s (from line %zu)", p->context,
                  context_line);
    else if (p->context)
        snprintf (context, sizeof context, " %s", p->context);
    return s_fail (b->config, line, b->where, "syntax error: %s%s",
                   p->problem ? p->problem : "invalid", context);
}

/*  Refuses the node events the YAML subset leaves out: aliases, anchors and
    tags (a tag that was only resolved is fine).  */
static int
s_check_event (s_builder_t *b, const yaml_event_t *ev, size_t line,
               const char *path)
{
    const yaml_char_t *anchor, *tag;
    bool implicit;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        implicit = ev->data.scalar.plain_implicit
                   || ev->data.scalar.quoted_implicit;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        implicit = ev->data.mapping_start.implicit;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        implicit = ev->data.sequence_start.implicit;
        break;
    case YAML_ALIAS_EVENT:
        return s_fail (b->config, line, path,
                       "aliases (*%s) are not supported; write the value out",
                       (const char *) ev->data.alias.anchor);
    default:
        return s_fail (b->config, line, path, "unexpected YAML event %d",
                       (int) ev->type);
    }
    if (anchor)
        return s_fail (b->config, line, path,
                       "anchors (&%s) are not supported; write the value out",
                       (const char *) anchor);
    if (tag && !implicit)
        return s_fail (b->config, line, path, "tags (%s) are not supported",
                       (const char *) tag);
    return 0;
}

/*  The key of a map entry from its event, which this deletes; NULL with the
    message set when the key is not a plain, new name.  */
static char *
s_build_key (s_builder_t *b, const ferry_cnode_t *map, yaml_event_t *ev,
             size_t line)
{
    char *key = NULL;
    int rc;
    if (ev->type != YAML_SCALAR_EVENT)
        rc = s_fail (b->config, line, map->path, "%s",
                     ev->type == YAML_ALIAS_EVENT
                         ? "aliases are not supported; write the value out"
                         : "a key must be a plain name, not a collection");
    else {
        key = ferry_strndup ((const char *) ev->data.scalar.value,
                             ev->data.scalar.length);
        rc = s_check_event (b, ev, line, map->path);
        if (rc == 0 && (strlen (key) != ev->data.scalar.length || !*key))
            rc = s_fail (b->config, line, map->path, "empty key");
    }
    yaml_event_delete (ev);
    if (rc == 0 && strpbrk (key, ".[]="))
        rc = s_fail (b->config, line, map->path,
                     "key '%s' contains '.', '[', ']' or '=', which a path "
                     "cannot name",
                     key);
    for (size_t i = 0; rc == 0 && i < map->size; i++) {
        const ferry_cnode_t *old = map->items[i];
        if (strcmp (old->key, key) == 0)
            rc = b->cmdline ? s_fail (b->config, 0, old->path, "duplicate key")
                            : s_fail (b->config, line, old->path,
                                      "duplicate key (first at line %zu)",
                                      old->line);
    }
    if (rc)
        free (key);
    return rc ? NULL : key;
}

static int s_build (s_builder_t *b, yaml_event_t *ev, char *path,
                    const char *key, size_t line, int depth,
                    ferry_cnode_t **out);

/*  Reads the entries of a map, or the items of a sequence, whose start
    event was consumed, up to its end event.  */
static int
s_build_items (s_builder_t *b, ferry_cnode_t *parent, int depth)
{
    while (true) {
        yaml_event_t ev;
        if (s_next (b, &ev))
            return -1;
        if (ev.type == YAML_MAPPING_END_EVENT
            || ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete (&ev);
            return 0;
        }
        //  A map entry's line is its key's; its value is the next event.
        size_t line = s_line (b, &ev.start_mark);
        char *key = NULL;
        if (parent->type == FERRY_CNODE_MAP) {
            key = s_build_key (b, parent, &ev, line);
            if (!key || s_next (b, &ev)) {
                free (key);
                return -1;
            }
        }
        char *path = s_path_child (parent->path, key, key ? strlen (key) : 0,
                                   parent->size);
        ferry_cnode_t *child;
        int rc = s_build (b, &ev, path, key, line, depth + 1, &child);
        yaml_event_delete (&ev);
        free (key);
        if (rc)
            return -1;
        s_node_append (parent, child);
    }
}

/*  Builds the node that starts with ev (which the caller deletes).  Takes
    ownership of path; line is the key's line for map entries.  On success
    *out is a detached node.  */
static int
s_build (s_builder_t *b, yaml_event_t *ev, char *path, const char *key,
         size_t line, int depth, ferry_cnode_t **out)
{
    int rc = depth > S_MAX_DEPTH
                 ? s_fail (b->config, line, path, "nested more than %d levels",
                           S_MAX_DEPTH)
                 : s_check_event (b, ev, line, path);
    if (rc == 0 && ev->type == YAML_SCALAR_EVENT
        && strlen ((const char *) ev->data.scalar.value)
               != ev->data.scalar.length)
        rc = s_fail (b->config, line, path, "NUL byte in a value");
    if (rc) {
        free (path);
        return -1;
    }
    ferry_cnode_t *node;
    if (ev->type == YAML_SCALAR_EVENT) {
        node = s_node_new (FERRY_CNODE_SCALAR, path, key, line);
        node->value = ferry_strndup ((const char *) ev->data.scalar.value,
                                     ev->data.scalar.length);
        node->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    }
    else {
        node = s_node_new (ev->type == YAML_MAPPING_START_EVENT
                               ? FERRY_CNODE_MAP
                               : FERRY_CNODE_SEQ,
                           path, key, line);
        if (s_build_items (b, node, depth)) {
            s_node_destroy (&node);
            return -1;
        }
    }
    *out = node;
    return 0;
}

/*  Parses one YAML document of text.  *out is its top node, or NULL for an
    empty stream.  A second document is an error.  path names the top node
    (the --set path, or "" for a file).  */
static int
s_parse_document (ferry_config_t *self, const char *text, size_t len,
                  bool cmdline, const char *path, ferry_cnode_t **out)
{
    s_builder_t b = {.config = self, .cmdline = cmdline, .where = path};
    if (!yaml_parser_initialize (&b.parser))
        return s_fail (self, cmdline ? 0 : 1, path,
                       "cannot initialise the YAML parser");
    yaml_parser_set_input_string (&b.parser, (const unsigned char *) text,
                                  len);
    ferry_cnode_t *top = NULL;
    int rc = 0;
    yaml_event_type_t type = YAML_NO_EVENT;
    while (rc == 0 && type != YAML_STREAM_END_EVENT) {
        yaml_event_t ev;
        if (s_next (&b, &ev)) {
            rc = -1;
            break;
        }
        type = ev.type;
        size_t line = s_line (&b, &ev.start_mark);
        bool block
            = (type == YAML_MAPPING_START_EVENT
               && ev.data.mapping_start.style == YAML_BLOCK_MAPPING_STYLE)
              || (type == YAML_SEQUENCE_START_EVENT
                  && ev.data.sequence_start.style
                         == YAML_BLOCK_SEQUENCE_STYLE);
        if (type == YAML_DOCUMENT_START_EVENT && top)
            rc = s_fail (self, line, path, "more than one YAML document");
        else if (type == YAML_STREAM_START_EVENT
                 || type == YAML_STREAM_END_EVENT
                 || type == YAML_DOCUMENT_START_EVENT
                 || type == YAML_DOCUMENT_END_EVENT)
            ;
        else if (block && cmdline)
            rc = s_fail (self, 0, path,
                         "the value must be a scalar or a flow collection "
                         "([a, b] or {k: v}); quote it");
        else
            rc = s_build (&b, &ev, ferry_strdup (path), NULL, line, 0, &top);
        yaml_event_delete (&ev);
    }
    yaml_parser_delete (&b.parser);
    if (rc)
        s_node_destroy (&top);
    *out = top;
    return rc;
}

/* ---- constructor and destructor ------------------------------------------ */

static ferry_config_t *
s_config_new (const char *source)
{
    ferry_config_t *self = ferry_calloc (1, sizeof *self);
    self->source = ferry_strdup (source);
    self->root = s_node_new (FERRY_CNODE_MAP, ferry_strdup (""), NULL, 0);
    return self;
}

ferry_config_t *
ferry_config_new (void)
{
    return s_config_new ("(none)");
}

ferry_config_t *
ferry_config_parse (const char *text, size_t len, const char *name, char *err,
                    size_t errlen)
{
    assert (text || len == 0);
    ferry_config_t *self = s_config_new (name ? name : "(text)");
    ferry_cnode_t *top = NULL;
    int rc = s_parse_document (self, text ? text : "", len, false, "", &top);
    if (top && top->type == FERRY_CNODE_MAP) {
        s_node_destroy (&self->root);
        self->root = top;
        top = NULL;
    }
    else if (top && !s_is_null (top))
        //  A file holding only "---" or "~" is as empty as an empty file.
        rc = s_fail (self, top->line, "",
                     "the top level must be a map of sections (log:, "
                     "broker:, ...), not %s",
                     s_type_names[top->type]);
    s_node_destroy (&top);
    if (rc) {
        if (err && errlen)
            snprintf (err, errlen, "%s", self->error);
        ferry_config_destroy (&self);
    }
    return self;
}

ferry_config_t *
ferry_config_load (const char *path, char *err, size_t errlen)
{
    assert (path);
    FILE *file = fopen (path, "rb");
    const char *failed = "open";
    char *text = NULL;
    size_t len = 0, alloc = 0, got;
    if (file) {
        do {
            if (len == alloc) {
                alloc = alloc ? alloc * 2 : 4096;
                text = ferry_realloc (text, alloc);
            }
            got = fread (text + len, 1, alloc - len, file);
            len += got;
        } while (got > 0);
        failed = ferror (file) ? "read" : NULL;
        int saved = errno;
        fclose (file);
        errno = saved;
    }
    if (failed) {
        if (err && errlen)
            snprintf (err, errlen, "%s: cannot %s: %s", path, failed,
                      strerror (errno));
        free (text);
        return NULL;
    }
    ferry_config_t *self = ferry_config_parse (text, len, path, err, errlen);
    free (text);
    return self;
}

void
ferry_config_destroy (ferry_config_t **self_p)
{
    assert (self_p);
    ferry_config_t *self = *self_p;
    if (!self)
        return;
    s_node_destroy (&self->root);
    free (self->source);
    free (self);
    *self_p = NULL;
}

const char *
ferry_config_error (const ferry_config_t *self)
{
    return self->error;
}

const char *
ferry_config_source (const ferry_config_t *self)
{
    return self->source;
}

/* ---- paths --------------------------------------------------------------- */

/*  One step of a path: a key, or [index].  */
typedef struct {
    const char *key;  /* NULL for an index step */
    size_t key_len;   /* 0 for an index step */
    size_t index;
} s_step_t;

/*  Reads the next step of *cursor.  Returns 1 with step filled, 0 at the
    end, -1 when the path is malformed.  */
static int
s_path_next (const char **cursor, s_step_t *step)
{
    const char *s = *cursor;
    if (*s == '\0')
        return 0;
    *step = (s_step_t) {NULL, 0, 0};
    if (*s == '[') {
        size_t digits = 0;
        for (s++; *s >= '0' && *s <= '9'; s++, digits++) {
            if (digits == 9)
                return -1;
            step->index = step->index * 10 + (size_t) (*s - '0');
        }
        if (digits == 0 || *s++ != ']')
            return -1;
    }
    else {
        if (*s == '.')
            s++;
        step->key = s;
        step->key_len = strcspn (s, ".[]=");
        if (step->key_len == 0)
            return -1;
        s += step->key_len;
    }
    //  After a step comes the end, "." and a key, or "[".
    if (*s != '\0' && *s != '['
        && !(*s == '.' && s[1] && s[1] != '.' && s[1] != '['))
        return -1;
    *cursor = s;
    return 1;
}

static bool
s_path_valid (const char *path)
{
    s_step_t step;
    int rc = *path == '.' ? -1 : 1;
    while (rc == 1)
        rc = s_path_next (&path, &step);
    return rc == 0;
}

/*  The index of the child of node that step names, or -1.  */
static ssize_t
s_child_index (const ferry_cnode_t *node, const s_step_t *step)
{
    if (step->key) {
        if (node->type != FERRY_CNODE_MAP)
            return -1;
        for (size_t i = 0; i < node->size; i++)
            if (strlen (node->items[i]->key) == step->key_len
                && memcmp (node->items[i]->key, step->key, step->key_len) == 0)
                return (ssize_t) i;
        return -1;
    }
    if (node->type != FERRY_CNODE_SEQ || step->index >= node->size)
        return -1;
    return (ssize_t) step->index;
}

/*  Finds path below base (NULL = root).  Returns 0 with *out the node, or
    NULL when it is absent (or an ancestor on the way is a null); -1 when a
    node on the way is a scalar or the wrong kind of collection (message set
    when report is given).  With mark, every node on the way is marked read,
    so an unknown key is reported where it is, not as its whole section.  */
static int
s_find (const ferry_config_t *self, ferry_config_t *report,
        const ferry_cnode_t *base, const char *path, bool mark,
        const ferry_cnode_t **out)
{
    const ferry_cnode_t *node = base ? base : self->root;
    *out = NULL;
    if (!path)
        path = "";
    if (!s_path_valid (path))
        return report ? s_fail (report, node->line, node->path,
                                "invalid path '%s'", path)
                      : -1;
    s_step_t step;
    while (s_path_next (&path, &step) == 1) {
        if (mark)
            s_mark (node);
        if (s_is_null (node))
            return 0;
        ferry_cnode_type_t want = step.key ? FERRY_CNODE_MAP : FERRY_CNODE_SEQ;
        if (node->type != want)
            return report ? s_fail (report, node->line, node->path,
                                    "expected %s, found %s",
                                    s_type_names[want],
                                    s_type_names[node->type])
                          : -1;
        ssize_t i = s_child_index (node, &step);
        if (i < 0)
            return 0;
        node = node->items[i];
    }
    if (mark)
        s_mark (node);
    *out = node;
    return 0;
}

/* ---- nodes: public ------------------------------------------------------- */

const ferry_cnode_t *
ferry_config_root (const ferry_config_t *self)
{
    return self->root;
}

const ferry_cnode_t *
ferry_config_node (const ferry_config_t *self, const ferry_cnode_t *node,
                   const char *path)
{
    const ferry_cnode_t *found;
    return s_find (self, NULL, node, path, true, &found) ? NULL : found;
}

ferry_cnode_type_t
ferry_cnode_type (const ferry_cnode_t *node)
{
    return node ? node->type : (ferry_cnode_type_t) 0;
}

size_t
ferry_cnode_size (const ferry_cnode_t *node)
{
    return node ? node->size : 0;
}

const ferry_cnode_t *
ferry_cnode_child (const ferry_cnode_t *node, size_t i)
{
    if (!node || i >= node->size)
        return NULL;
    s_mark (node->items[i]);
    return node->items[i];
}

const char *
ferry_cnode_key (const ferry_cnode_t *node)
{
    return node ? node->key : NULL;
}

const char *
ferry_cnode_value (const ferry_cnode_t *node)
{
    if (!node || node->type != FERRY_CNODE_SCALAR)
        return NULL;
    s_mark (node);
    return node->value;
}

size_t
ferry_cnode_line (const ferry_cnode_t *node)
{
    return node ? node->line : 0;
}

const char *
ferry_cnode_path (const ferry_cnode_t *node)
{
    return node ? node->path : NULL;
}

/* ---- typed getters ------------------------------------------------------- */

/*  A unit suffix and what it multiplies by.  */
typedef struct {
    const char *name;
    uint64_t scale;
} s_unit_t;

/*  Messages show a bound in the first unit of the list that keeps it
    whole, so each list runs largest first and puts the units that are only
    read after the bare number.  */
static const s_unit_t s_duration_units[] = {
    {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1}, {"", 1}, {NULL, 0}};
static const s_unit_t s_size_units[] = {
    {"GiB", 1024ull * 1024 * 1024}, {"MiB", 1024 * 1024}, {"KiB", 1024},
    {"", 1}, {"B", 1}, {"GB", 1000000000}, {"MB", 1000000}, {"KB", 1000},
    {NULL, 0}};

/*  What one typed getter reads.  Every getter but ferry_config_str goes
    through s_get with its values in a uint64_t, which holds an int64_t
    for the signed kinds.  */
typedef struct {
    const char *expected;       /* "expected %s, found '...'" */
    int (*parse) (const char *text, uint64_t *v); /* NULL: a number+unit */
    const s_unit_t *units;      /* NULL: shown as a plain integer */
    bool fraction;              /* "1.5s" may be read */
    bool is_signed;
    uint64_t floor, ceiling;    /* bounds that leave the range open */
} s_kind_t;

static int
s_parse_int (const char *text, uint64_t *v)
{
    int64_t i;
    if (ferry_parse_int64 (text, &i))
        return -1;
    *v = (uint64_t) i;
    return 0;
}

static int
s_parse_bool (const char *text, uint64_t *v)
{
    static const char *words[] = {"false", "true", "no", "yes",
                                  "off",   "on",   "0",  "1"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasecmp (text, words[i]) == 0) {
            *v = i % 2;
            return 0;
        }
    return -1;
}

static const s_kind_t s_int_kind = {
    .expected = "an integer", .parse = s_parse_int, .is_signed = true,
    .floor = (uint64_t) INT64_MIN, .ceiling = INT64_MAX};
static const s_kind_t s_bool_kind = {
    .expected = "true or false (also yes/no, on/off, 1/0)",
    .parse = s_parse_bool, .ceiling = 1};
//  A duration below zero cannot be written, so a minimum of 0 is none.
static const s_kind_t s_duration_kind = {
    .expected = "a duration such as 250ms, 5s, 1.5s, 2m or 1h",
    .units = s_duration_units, .fraction = true, .is_signed = true,
    .ceiling = INT64_MAX};
static const s_kind_t s_size_kind = {
    .expected = "a size such as 512, 64KiB, 1MiB or 1GB",
    .units = s_size_units, .ceiling = UINT64_MAX};

#define S_DIGIT(c) ((c) >= '0' && (c) <= '9')

/*  Parses "DIGITS[.DIGITS]UNIT" with kind's units; -1 when the text is not
    that, the result passes kind's ceiling or is not a whole number.  */
static int
s_parse_units (const char *s, const s_kind_t *kind, uint64_t *out)
{
    uint64_t whole = 0, frac = 0, div = 1;
    if (!S_DIGIT (*s))
        return -1;
    for (; S_DIGIT (*s); s++) {
        if (whole > (UINT64_MAX - 9) / 10)
            return -1;
        whole = whole * 10 + (uint64_t) (*s - '0');
    }
    if (*s == '.' && kind->fraction) {
        if (!S_DIGIT (s[1]))
            return -1;
        s++;
        for (; S_DIGIT (*s); s++) {
            //  Nine digits reach a nanosecond of an hour: more is noise.
            if (div == 1000000000)
                return -1;
            frac = frac * 10 + (uint64_t) (*s - '0');
            div *= 10;
        }
    }
    for (const s_unit_t *unit = kind->units; unit->name; unit++) {
        if (strcmp (s, unit->name) != 0)
            continue;
        //  frac < 10^9 and a scale <= 2^30: the product fits.
        uint64_t part = frac * unit->scale;
        if (whole > kind->ceiling / unit->scale || part % div
            || whole * unit->scale > kind->ceiling - part / div)
            return -1;
        *out = whole * unit->scale + part / div;
        return 0;
    }
    return -1;
}

/*  A bound for messages, in the largest unit that keeps it whole.  */
static void
s_show (const s_kind_t *kind, uint64_t v, char *buf, size_t len)
{
    const s_unit_t *unit = kind->units;
    while (unit && (v % unit->scale || (v == 0 && unit->scale != 1)))
        unit++;
    if (unit)
        snprintf (buf, len, "%" PRIu64 "%s", v / unit->scale, unit->name);
    else
        snprintf (buf, len, "%" PRId64, (int64_t) v);
}

static bool
s_less (const s_kind_t *kind, uint64_t a, uint64_t b)
{
    return kind->is_signed ? (int64_t) a < (int64_t) b : a < b;
}

/*  The scalar at path for a getter: returns 1 with *out set, 0 when it is
    absent or null (use the default), -1 on a type error.  */
static int
s_scalar (ferry_config_t *self, const ferry_cnode_t *base, const char *path,
          const ferry_cnode_t **out)
{
    assert (self);
    const ferry_cnode_t *node;
    if (s_find (self, self, base, path, true, &node))
        return -1;
    if (!node || s_is_null (node))
        return 0;
    if (node->type != FERRY_CNODE_SCALAR)
        return s_fail (self, node->line, node->path,
                       "expected a single value, found %s",
                       s_type_names[node->type]);
    *out = node;
    return 1;
}

/*  The one path of the typed getters: finds the scalar, parses it as kind,
    checks it against [min, max] and stores it (or dflt when absent).  */
static int
s_get (ferry_config_t *self, const ferry_cnode_t *base, const char *path,
       const s_kind_t *kind, uint64_t min, uint64_t max, uint64_t dflt,
       uint64_t *out)
{
    const ferry_cnode_t *node;
    int rc = s_scalar (self, base, path, &node);
    if (rc <= 0) {
        if (rc == 0)
            *out = dflt;
        return rc;
    }
    uint64_t v;
    if (kind->parse ? kind->parse (node->value, &v)
                    : s_parse_units (node->value, kind, &v))
        return s_fail (self, node->line, node->path, "expected %s, found '%s'",
                       kind->expected, node->value);
    if (s_less (kind, v, min) || s_less (kind, max, v)) {
        char a[32], b[32];
        s_show (kind, min, a, sizeof a);
        s_show (kind, max, b, sizeof b);
        if (!s_less (kind, max, kind->ceiling))
            return s_fail (self, node->line, node->path,
                           "%s must be at least %s", node->value, a);
        if (!s_less (kind, kind->floor, min))
            return s_fail (self, node->line, node->path,
                           "%s must be at most %s", node->value, b);
        return s_fail (self, node->line, node->path,
                       "%s must be between %s and %s", node->value, a, b);
    }
    *out = v;
    return 0;
}

int
ferry_config_str (ferry_config_t *self, const ferry_cnode_t *base,
                  const char *path, const char *dflt, const char **out)
{
    const ferry_cnode_t *node;
    int rc = s_scalar (self, base, path, &node);
    if (rc < 0)
        return -1;
    *out = rc ? node->value : dflt;
    return 0;
}

/*  s_get for the kinds whose values are int64_t.  */
static int
s_get_int64 (ferry_config_t *self, const ferry_cnode_t *base, const char *path,
             const s_kind_t *kind, int64_t min, int64_t max, int64_t dflt,
             int64_t *out)
{
    uint64_t v;
    if (s_get (self, base, path, kind, (uint64_t) min, (uint64_t) max,
               (uint64_t) dflt, &v))
        return -1;
    *out = (int64_t) v;
    return 0;
}

int
ferry_config_int (ferry_config_t *self, const ferry_cnode_t *base,
                  const char *path, int64_t min, int64_t max, int64_t dflt,
                  int64_t *out)
{
    return s_get_int64 (self, base, path, &s_int_kind, min, max, dflt, out);
}

int
ferry_config_bool (ferry_config_t *self, const ferry_cnode_t *base,
                   const char *path, bool dflt, bool *out)
{
    uint64_t v;
    if (s_get (self, base, path, &s_bool_kind, 0, 1, dflt, &v))
        return -1;
    *out = v != 0;
    return 0;
}

int
ferry_config_duration_ms (ferry_config_t *self, const ferry_cnode_t *base,
                          const char *path, int64_t min_ms, int64_t max_ms,
                          int64_t dflt_ms, int64_t *out)
{
    return s_get_int64 (self, base, path, &s_duration_kind, min_ms, max_ms,
                        dflt_ms, out);
}

int
ferry_config_size (ferry_config_t *self, const ferry_cnode_t *base,
                   const char *path, uint64_t min, uint64_t max, uint64_t dflt,
                   uint64_t *out)
{
    return s_get (self, base, path, &s_size_kind, min, max, dflt, out);
}

/* ---- overrides ----------------------------------------------------------- */

int
ferry_config_set (ferry_config_t *self, const char *assignment)
{
    assert (self && assignment);
    const char *eq = strchr (assignment, '=');
    if (!eq || eq == assignment)
        return s_fail (self, 0, "",
                       "'%s': expected PATH=VALUE, e.g. edge.listen=127.0.0.1:"
                       "8080",
                       assignment);
    char *path = ferry_strndup (assignment, (size_t) (eq - assignment));
    const char *value = eq + 1;
    ferry_cnode_t *node = NULL;
    int rc = 0;
    //  The value first: when it is malformed the tree stays as it was.
    if (path[0] == '[' || !s_path_valid (path))
        rc = s_fail (self, 0, "",
                     "'%s': invalid path (keys separated by '.', items as "
                     "[N], e.g. edge.routes[0].timeout)",
                     path);
    else if (*value)
        rc = s_parse_document (self, value, strlen (value), true, path, &node);
    if (rc == 0 && !node) {
        //  "--set worker.pool=" means the empty string, not a null; only a
        //  comment ("#...") is an empty document, which is a null.
        node = s_node_new (FERRY_CNODE_SCALAR, NULL, NULL, 0);
        node->value = ferry_strdup ("");
        node->plain = *value != '\0';
    }
    //  Walk to the parent, creating maps (and a sequence for "[0]") on the
    //  way; a null on the way is replaced, as an empty value stood for
    //  "nothing here yet".
    ferry_cnode_t *cur = self->root;
    const char *cursor = path;
    s_step_t step, next = {NULL, 0, 0};
    if (rc == 0)
        s_path_next (&cursor, &step);
    while (rc == 0) {
        bool last = s_path_next (&cursor, &next) == 0;
        ferry_cnode_type_t want = next.key ? FERRY_CNODE_MAP : FERRY_CNODE_SEQ;
        ssize_t i = s_child_index (cur, &step);
        ferry_cnode_t *child = i >= 0 ? cur->items[i] : NULL;
        char *here = s_path_child (cur->path, step.key, step.key_len,
                                   step.index);
        if (!step.key && i < 0 && step.index != cur->size)
            rc = s_fail (self, 0, cur->path,
                         "no item [%zu] to set (the sequence has %zu; [%zu] "
                         "appends)",
                         step.index, cur->size, cur->size);
        else if (!last && child && !s_is_null (child) && child->type != want)
            rc = s_fail (self, 0, here, "expected %s, found %s",
                         s_type_names[want], s_type_names[child->type]);
        else if (!last && child && !s_is_null (child))
            cur = child;
        else {
            ferry_cnode_t *put = last ? node : s_node_new (want, NULL, NULL, 0);
            free (put->path);
            put->path = here;
            here = NULL;
            if (step.key)
                put->key = ferry_strndup (step.key, step.key_len);
            if (child) {
                s_node_destroy (&cur->items[i]);
                cur->items[i] = put;
                put->parent = cur;
            }
            else
                s_node_append (cur, put);
            if (last) {
                node = NULL;
                break;
            }
            cur = put;
        }
        free (here);
        step = next;
    }
    s_node_destroy (&node);
    free (path);
    return rc;
}

/* ---- unused settings ----------------------------------------------------- */

static const ferry_cnode_t *
s_first_unread (const ferry_cnode_t *node)
{
    for (size_t i = 0; i < node->size; i++) {
        const ferry_cnode_t *child = node->items[i];
        const ferry_cnode_t *unread = child->read ? s_first_unread (child)
                                                  : child;
        if (unread)
            return unread;
    }
    return NULL;
}

int
ferry_config_check_unused (ferry_config_t *self, const char *prefix)
{
    assert (self);
    const ferry_cnode_t *top;
    if (s_find (self, self, NULL, prefix, false, &top))
        return -1;
    if (!top)
        return 0;
    const ferry_cnode_t *unread = s_first_unread (top);
    if (top->type == FERRY_CNODE_SCALAR && !top->read && top != self->root)
        unread = top;
    return unread ? s_fail (self, unread->line, unread->path,
                            "unknown setting")
                  : 0;
}

/* ---- command line -------------------------------------------------------- */

enum {
    S_OPT_SET = 0x100,
    S_OPT_LOG_LEVEL,
    S_OPT_FLAG /* S_OPT_FLAG + i for flags[i] */
};

static void
s_help_line (const char *option, const char *help, const char *path)
{
    int width = printf ("  %s", option);
    if (width > 25) {
        printf ("\n");
        width = 0;
    }
    printf ("%*s%s", 26 - width, "", help);
    if (path)
        printf (" (config: %s)", path);
    printf ("\n");
}

static void
s_help (const char *program, const char *summary, const ferry_flag_t *flags)
{
    printf ("Usage: %s [OPTIONS]\n", program);
    if (summary && *summary)
        printf ("%s\n", summary);
    printf ("\nOptions:\n");
    s_help_line ("-c, --config FILE",
                 "the YAML file (default: $FERRY_CONFIG, else none)", NULL);
    s_help_line ("    --set PATH=VALUE",
                 "set a value over the file's (repeatable)", NULL);
    for (size_t i = 0; flags && flags[i].flag; i++) {
        char option[128];
        snprintf (option, sizeof option, "    --%s VALUE", flags[i].flag);
        s_help_line (option, flags[i].help ? flags[i].help : "",
                     flags[i].path);
    }
    s_help_line ("    --log-level LEVEL", "error, warn, info or debug",
                 "log.level");
    s_help_line ("-h, --help", "print this help and exit", NULL);
    s_help_line ("-V, --version", "print the version and exit", NULL);
    printf ("\nFlags and --set apply in command-line order, after the file, "
            "e.g.\n--set log.level=debug or --set 'edge.routes[0].timeout=10s'."
            "\nEvery setting is described in docs/configuration.md.\n");
}

int
ferry_cli_load (int argc, char **argv, const char *program,
                const char *summary, const ferry_flag_t *flags,
                ferry_config_t **config_p)
{
    assert (program && config_p);
    *config_p = NULL;
    size_t nflags = 0;
    while (flags && flags[nflags].flag)
        nflags++;
    struct option *options = ferry_calloc (nflags + 6, sizeof *options);
    options[0] = (struct option) {"config", required_argument, NULL, 'c'};
    options[1] = (struct option) {"set", required_argument, NULL, S_OPT_SET};
    options[2] = (struct option) {"log-level", required_argument, NULL,
                                  S_OPT_LOG_LEVEL};
    options[3] = (struct option) {"help", no_argument, NULL, 'h'};
    options[4] = (struct option) {"version", no_argument, NULL, 'V'};
    for (size_t i = 0; i < nflags; i++) {
        assert (flags[i].path && s_path_valid (flags[i].path));
        options[5 + i] = (struct option) {flags[i].flag, required_argument,
                                          NULL, S_OPT_FLAG + (int) i};
    }
    //  Assignments in command-line order; each one owned here.
    char **sets = ferry_calloc ((size_t) (argc > 0 ? argc : 1), sizeof *sets);
    size_t nsets = 0;
    const char *file = getenv ("FERRY_CONFIG");
    if (file && !*file)
        file = NULL;
    int rc = 0;
    //  optind 0 makes glibc start afresh, so a second call (tests) works;
    //  "+" stops at the first argument that is not an option, ":" reports a
    //  missing value apart from an unknown option.  We print our own errors.
    optind = 0;
    opterr = 0;
    int c;
    while (rc == 0
           && (c = getopt_long (argc, argv, "+:c:hV", options, NULL)) != -1) {
        if (c == 'c')
            file = optarg;
        else if (c == S_OPT_SET)
            sets[nsets++] = ferry_strdup (optarg);
        else if (c == 'h' || c == 'V') {
            if (c == 'h')
                s_help (program, summary, flags);
            else
                printf ("%s (ferry) %s\n", program, PACKAGE_VERSION);
            rc = 1;
        }
        else if (c == ':') {
            fprintf (stderr, "%s: option '%s' needs a value\n", program,
                     argv[optind - 1]);
            rc = -1;
        }
        else if (c == '?') {
            //  glibc leaves a long option's text in argv[optind - 1]; a
            //  short one may sit inside a group such as "-xc", so name it.
            const char *arg = argv[optind - 1];
            if (strncmp (arg, "--", 2) == 0)
                fprintf (stderr,
                         "%s: unknown option '%.*s' (see --help)\n", program,
                         (int) strcspn (arg, "="), arg);
            else
                fprintf (stderr, "%s: unknown option '-%c' (see --help)\n",
                         program, optopt);
            rc = -1;
        }
        else {
            //  --log-level and the daemon's flags are --set shorthands.
            assert (c == S_OPT_LOG_LEVEL
                    || (c >= S_OPT_FLAG && (size_t) (c - S_OPT_FLAG) < nflags));
            const char *path = c == S_OPT_LOG_LEVEL
                                   ? "log.level"
                                   : flags[c - S_OPT_FLAG].path;
            size_t len = strlen (path) + strlen (optarg) + 2;
            sets[nsets] = ferry_malloc (len);
            snprintf (sets[nsets++], len, "%s=%s", path, optarg);
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf (stderr, "%s: unexpected argument '%s' (see --help)\n",
                 program, argv[optind]);
        rc = -1;
    }
    ferry_config_t *config = NULL;
    if (rc == 0) {
        char err[1024];
        config = file ? ferry_config_load (file, err, sizeof err)
                      : ferry_config_new ();
        if (!config) {
            fprintf (stderr, "%s: %s\n", program, err);
            rc = -1;
        }
    }
    for (size_t i = 0; rc == 0 && i < nsets; i++)
        if (ferry_config_set (config, sets[i])) {
            fprintf (stderr, "%s: %s\n", program, ferry_config_error (config));
            rc = -1;
        }
    for (size_t i = 0; i < nsets; i++)
        free (sets[i]);
    free (sets);
    free (options);
    if (rc == 0)
        *config_p = config;
    else
        ferry_config_destroy (&config);
    return rc;
}

/* ---- tests --------------------------------------------------------------- */

#include <fcntl.h>
#include <unistd.h>

//  Shaped like etc/ferry.yaml; the line numbers matter to the tests.
static const char s_sample[] =
    "# sample\n"                                          //  1
    "log:\n"                                              //  2
    "  level: info\n"                                     //  3
    "  json: false\n"                                     //  4
    "broker:\n"                                           //  5
    "  frontend: tcp://127.0.0.1:5555\n"                  //  6
    "  heartbeat: 1s\n"                                   //  7
    "  liveness: 3\n"                                     //  8
    "  max_message: 17MiB\n"                              //  9
    "  services:\n"                                       // 10
    "    app:\n"                                          // 11
    "      queue_limit: 1000\n"                           // 12
    "    reports:\n"                                      // 13
    "      queue_limit: 4\n"                              // 14
    "edge:\n"                                             // 15
    "  listen: 127.0.0.1:8080\n"                          // 16
    "  routes:\n"                                         // 17
    "    - route: GET /users/{id:int}\n"                  // 18
    "      service: app\n"                                // 19
    "    - route: GET /reports/slow\n"                    // 20
    "      timeout: 30s\n"                                // 21
    "      query:\n"                                      // 22
    "        seconds: {type: number, required: true}\n"   // 23
    "worker:\n"                                           // 24
    "  pool: \"\"\n"                                      // 25
    "  database:\n"                                       // 26
    "pools:\n"                                            // 27
    "  app:\n"                                            // 28
    "    operations:\n"                                   // 29
    "      get_user:\n"                                   // 30
    "        sql: >-\n"                                   // 31
    "          SELECT id FROM users\n"                    // 32
    "          WHERE id = $1\n"                           // 33
    "        params: [id:int8, \"limit:int4=20\"]\n"      // 34
    "        result: one\n";                              // 35

static ferry_config_t *
s_sample_config (void)
{
    return ferry_config_parse (s_sample, strlen (s_sample), "sample.yaml",
                               NULL, 0);
}

/*  Parses text named name; returns the error message ("" on success).  */
static const char *
s_parse_error (const char *text, const char *name)
{
    static char err[1024];
    err[0] = '\0';
    ferry_config_t *config
        = ferry_config_parse (text, strlen (text), name, err, sizeof err);
    if (config)
        err[0] = '\0';
    ferry_config_destroy (&config);
    return err;
}

static bool
s_error_is (const ferry_config_t *config, const char *expected, bool verbose)
{
    bool same = strcmp (ferry_config_error (config), expected) == 0;
    if (!same || verbose)
        fprintf (stderr, "# %s: '%s'\n", same ? "error" : "unexpected error",
                 ferry_config_error (config));
    return same;
}

static bool
s_starts (const char *s, const char *prefix)
{
    return strncmp (s, prefix, strlen (prefix)) == 0;
}

/*  The string getter finds want at path (NULL: it gave NULL).  */
static bool
s_str_is (ferry_config_t *config, const ferry_cnode_t *base, const char *path,
          const char *dflt, const char *want)
{
    const char *s = NULL;
    if (ferry_config_str (config, base, path, dflt, &s))
        return false;
    return want ? s && strcmp (s, want) == 0 : s == NULL;
}

/*  Reads path with the getter kind ('i' int, 'd' duration, 'z' size, 'b'
    bool, 's' string) in [min, max] (INT64_MAX stands for UINT64_MAX for
    sizes); returns the getter's status with the value in *out.  */
static int
s_get_as (ferry_config_t *config, char kind, const char *path, int64_t min,
          int64_t max, int64_t *out)
{
    uint64_t u = 0;
    bool b = false;
    const char *s;
    int rc;
    switch (kind) {
    case 'i':
        return ferry_config_int (config, NULL, path, min, max, -1, out);
    case 'd':
        return ferry_config_duration_ms (config, NULL, path, min, max, -1,
                                         out);
    case 'z':
        rc = ferry_config_size (config, NULL, path, (uint64_t) min,
                                max == INT64_MAX ? UINT64_MAX : (uint64_t) max,
                                0, &u);
        *out = (int64_t) u;
        return rc;
    case 'b':
        rc = ferry_config_bool (config, NULL, path, true, &b);
        *out = b;
        return rc;
    default:
        return ferry_config_str (config, NULL, path, NULL, &s);
    }
}

int ferry_config_test (bool verbose);
int
ferry_config_test (bool verbose)
{
    ferry_config_t *config = s_sample_config ();
    FERRY_CHECK (config);
    FERRY_CHECK (strcmp (ferry_config_source (config), "sample.yaml") == 0);
    FERRY_CHECK (strcmp (ferry_config_error (config), "") == 0);

    static const struct {
        char kind;
        const char *path;
        int64_t min, max, value;
    } values[] = {
        {'b', "log.json", 0, 0, 0},
        {'d', "broker.heartbeat", 1, INT64_MAX, 1000},
        {'i', "broker.liveness", 1, 100, 3},
        {'z', "broker.max_message", 1, INT64_MAX, 17 * 1024 * 1024},
    };
    int64_t i;
    bool b;
    for (size_t k = 0; k < sizeof values / sizeof values[0]; k++)
        FERRY_CHECK (s_get_as (config, values[k].kind, values[k].path,
                               values[k].min, values[k].max, &i)
                         == 0
                     && i == values[k].value);
    FERRY_CHECK (s_str_is (config, NULL, "log.level", "warn", "info"));

    //  Absent keys and items give the default.
    FERRY_CHECK (ferry_config_int (config, NULL, "edge.max_connections", 1,
                                   100000, 1024, &i)
                     == 0
                 && i == 1024);
    FERRY_CHECK (ferry_config_duration_ms (config, NULL,
                                           "edge.routes[7].timeout", 1,
                                           INT64_MAX, 5000, &i)
                     == 0
                 && i == 5000);
    FERRY_CHECK (s_str_is (config, NULL, "nothing.here", NULL, NULL));
    //  "" is an empty string; an empty value is a null, so the default.
    FERRY_CHECK (s_str_is (config, NULL, "worker.pool", "x", ""));
    FERRY_CHECK (s_str_is (config, NULL, "worker.database", "dflt", "dflt"));

    //  Nodes: sequences, flow maps, lines and paths.
    const ferry_cnode_t *routes = ferry_config_node (config, NULL,
                                                     "edge.routes");
    FERRY_CHECK (routes && ferry_cnode_type (routes) == FERRY_CNODE_SEQ);
    FERRY_CHECK (ferry_cnode_size (routes) == 2);
    FERRY_CHECK (ferry_cnode_line (routes) == 17);
    FERRY_CHECK (strcmp (ferry_cnode_key (routes), "routes") == 0);
    const ferry_cnode_t *route = ferry_cnode_child (routes, 1);
    FERRY_CHECK (route && ferry_cnode_type (route) == FERRY_CNODE_MAP);
    FERRY_CHECK (strcmp (ferry_cnode_path (route), "edge.routes[1]") == 0);
    FERRY_CHECK (ferry_cnode_key (route) == NULL);
    FERRY_CHECK (ferry_cnode_line (route) == 20);
    FERRY_CHECK (ferry_cnode_child (routes, 2) == NULL);
    FERRY_CHECK (s_str_is (config, route, "route", NULL, "GET /reports/slow"));
    FERRY_CHECK (s_str_is (config, route, "query.seconds.type", NULL,
                           "number"));
    FERRY_CHECK (ferry_config_bool (config, route, "query.seconds.required",
                                    false, &b)
                     == 0
                 && b);
    const ferry_cnode_t *seconds
        = ferry_config_node (config, NULL, "edge.routes[1].query.seconds");
    FERRY_CHECK (seconds && ferry_cnode_line (seconds) == 23);
    FERRY_CHECK (strcmp (ferry_cnode_path (seconds),
                         "edge.routes[1].query.seconds")
                 == 0);
    FERRY_CHECK (ferry_config_node (config, routes, "[0].service")
                 == ferry_config_node (config, NULL,
                                       "edge.routes[0].service"));
    FERRY_CHECK (ferry_config_node (config, NULL, "")
                 == ferry_config_root (config));
    FERRY_CHECK (ferry_config_node (config, NULL, "edge..listen") == NULL);
    FERRY_CHECK (ferry_cnode_value (routes) == NULL);

    //  Iterating a map's entries (service names are data, not keys).
    const ferry_cnode_t *services
        = ferry_config_node (config, NULL, "broker.services");
    FERRY_CHECK (ferry_cnode_size (services) == 2);
    int64_t limits = 0;
    for (size_t k = 0; k < ferry_cnode_size (services); k++) {
        const ferry_cnode_t *svc = ferry_cnode_child (services, k);
        FERRY_CHECK (ferry_config_int (config, svc, "queue_limit", 1, 100000,
                                       1, &i)
                     == 0);
        limits += i;
    }
    FERRY_CHECK (limits == 1004);
    FERRY_CHECK (strcmp (ferry_cnode_key (ferry_cnode_child (services, 1)),
                         "reports")
                 == 0);

    //  Folded scalars and flow sequences.
    const ferry_cnode_t *op
        = ferry_config_node (config, NULL, "pools.app.operations.get_user");
    FERRY_CHECK (s_str_is (config, op, "sql", NULL,
                           "SELECT id FROM users WHERE id = $1"));
    const ferry_cnode_t *params = ferry_config_node (config, op, "params");
    FERRY_CHECK (ferry_cnode_type (params) == FERRY_CNODE_SEQ);
    FERRY_CHECK (ferry_cnode_size (params) == 2);
    FERRY_CHECK (strcmp (ferry_cnode_value (ferry_cnode_child (params, 1)),
                         "limit:int4=20")
                 == 0);
    FERRY_CHECK (strcmp (ferry_cnode_path (ferry_cnode_child (params, 1)),
                         "pools.app.operations.get_user.params[1]")
                 == 0);
    FERRY_CHECK (ferry_cnode_line (ferry_cnode_child (params, 0)) == 34);

    //  Checks the caller makes itself.
    const ferry_cnode_t *timeout = ferry_config_node (config, route,
                                                      "timeout");
    FERRY_CHECK (ferry_config_fail (config, timeout, "longer than %s", "5s")
                 == -1);
    FERRY_CHECK (s_error_is (config,
                             "sample.yaml:21: edge.routes[1].timeout: longer "
                             "than 5s",
                             verbose));
    FERRY_CHECK (ferry_config_fail (config, NULL, "no pools") == -1);
    FERRY_CHECK (s_error_is (config, "sample.yaml: no pools", verbose));
    ferry_config_destroy (&config);
    ferry_config_destroy (&config);
    FERRY_CHECK (config == NULL);

    //  Empty input is an empty configuration.
    config = ferry_config_new ();
    FERRY_CHECK (strcmp (ferry_config_source (config), "(none)") == 0);
    FERRY_CHECK (ferry_config_int (config, NULL, "a.b", 0, 10, 5, &i) == 0
                 && i == 5);
    FERRY_CHECK (ferry_config_check_unused (config, NULL) == 0);
    ferry_config_destroy (&config);
    const char *empties[] = {"", "# nothing\n", "---\n", "~\n", "---\n...\n"};
    for (size_t k = 0; k < sizeof empties / sizeof empties[0]; k++) {
        config = ferry_config_parse (empties[k], strlen (empties[k]), "e",
                                     NULL, 0);
        FERRY_CHECK (config);
        FERRY_CHECK (ferry_cnode_size (ferry_config_root (config)) == 0);
        ferry_config_destroy (&config);
    }
    return 0;
}

int ferry_config_errors_test (bool verbose);
int
ferry_config_errors_test (bool verbose)
{
    //  Getters refusing a value, each with file, line and path.
    static const struct {
        char kind;
        const char *path;
        int64_t min, max;
        const char *message;
    } refused[] = {
        {'i', "log.level", 0, 9,
         "sample.yaml:3: log.level: expected an integer, found 'info'"},
        {'i', "broker.liveness", 5, 10,
         "sample.yaml:8: broker.liveness: 3 must be between 5 and 10"},
        {'i', "broker.liveness", 5, INT64_MAX,
         "sample.yaml:8: broker.liveness: 3 must be at least 5"},
        {'d', "broker.heartbeat", 2000, 60000,
         "sample.yaml:7: broker.heartbeat: 1s must be between 2s and 1m"},
        {'d', "log.level", 0, 60000,
         "sample.yaml:3: log.level: expected a duration such as 250ms, 5s, "
         "1.5s, 2m or 1h, found 'info'"},
        {'z', "broker.max_message", 1024, 16 * 1024 * 1024,
         "sample.yaml:9: broker.max_message: 17MiB must be between 1KiB and "
         "16MiB"},
        {'b', "log.level", 0, 0,
         "sample.yaml:3: log.level: expected true or false (also yes/no, "
         "on/off, 1/0), found 'info'"},
        //  A map or a sequence where a value belongs, and the other way.
        {'s', "broker.services", 0, 0,
         "sample.yaml:10: broker.services: expected a single value, found a "
         "map"},
        {'i', "edge.routes", 0, 1,
         "sample.yaml:17: edge.routes: expected a single value, found a "
         "sequence"},
        {'s', "log.level.name", 0, 0,
         "sample.yaml:3: log.level: expected a map, found a scalar"},
        {'s', "edge.routes.route", 0, 0,
         "sample.yaml:17: edge.routes: expected a map, found a sequence"},
        {'s', "edge[0]", 0, 0,
         "sample.yaml:15: edge: expected a sequence, found a map"},
    };
    ferry_config_t *config = s_sample_config ();
    FERRY_CHECK (config);
    int64_t v;
    for (size_t k = 0; k < sizeof refused / sizeof refused[0]; k++)
        FERRY_CHECK (s_get_as (config, refused[k].kind, refused[k].path,
                               refused[k].min, refused[k].max, &v)
                         == -1
                     && s_error_is (config, refused[k].message, verbose));
    FERRY_CHECK (s_get_as (config, 's', "edge.", 0, 0, &v) == -1);
    FERRY_CHECK (strstr (ferry_config_error (config), "invalid path 'edge.'"));
    ferry_config_destroy (&config);

    //  Structure the subset refuses, each with file, line and path.
    static const struct {
        const char *text;
        const char *message;
    } bad[] = {
        {"a:\n  b: 1\n  b: 2\n",
         "bad.yaml:3: a.b: duplicate key (first at line 2)"},
        {"x: 1\nx: [2]\n", "bad.yaml:2: x: duplicate key (first at line 1)"},
        {"a: &x 1\nb: *x\n",
         "bad.yaml:1: a: anchors (&x) are not supported; write the value out"},
        {"a: 1\nb: [*x]\n",
         "bad.yaml:2: b[0]: aliases (*x) are not supported; write the value "
         "out"},
        {"a: !!str 1\n",
         "bad.yaml:1: a: tags (tag:yaml.org,2002:str) are not supported"},
        {"- a\n- b\n",
         "bad.yaml:1: the top level must be a map of sections (log:, "
         "broker:, ...), not a sequence"},
        {"just text\n",
         "bad.yaml:1: the top level must be a map of sections (log:, "
         "broker:, ...), not a scalar"},
        {"a:\n  ? [1, 2]\n  : x\n",
         "bad.yaml:2: a: a key must be a plain name, not a collection"},
        {"a:\n  b.c: 1\n",
         "bad.yaml:2: a: key 'b.c' contains '.', '[', ']' or '=', which a "
         "path cannot name"},
        {"a: 1\n---\nb: 2\n", "bad.yaml:2: more than one YAML document"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        const char *err = s_parse_error (bad[k].text, "bad.yaml");
        if (verbose || strcmp (err, bad[k].message) != 0)
            fprintf (stderr, "# error: '%s'\n", err);
        FERRY_CHECK (strcmp (err, bad[k].message) == 0);
    }

    //  Syntax errors name the line libyaml stopped at.
    static const struct {
        const char *text;
        const char *prefix;
    } syntax[] = {
        {"a:\n  b: 1\n c: 2\n", "bad.yaml:3: syntax error: "},
        {"a: 1\nb: [1, 2\nc: 3\n", "bad.yaml:"},
        {"a: \"open\n", "bad.yaml:"},
        {"a:\tb: c\n", "bad.yaml:1: syntax error: "},
    };
    for (size_t k = 0; k < sizeof syntax / sizeof syntax[0]; k++) {
        const char *err = s_parse_error (syntax[k].text, "bad.yaml");
        if (verbose)
            fprintf (stderr, "# syntax: '%s'\n", err);
        FERRY_CHECK (s_starts (err, syntax[k].prefix)
                     && strstr (err, ": syntax error: "));
    }

    //  Nesting bombs stop at a fixed depth.
    char deep[400] = "a: ";
    memset (deep + 3, '[', 100);
    memset (deep + 103, ']', 100);
    deep[203] = '\0';
    FERRY_CHECK (strstr (s_parse_error (deep, "deep.yaml"),
                         "nested more than 64 levels"));

    //  Files that cannot be read.
    char msg[256];
    FERRY_CHECK (ferry_config_load ("/nonexistent/ferry.yaml", msg, sizeof msg)
                 == NULL);
    FERRY_CHECK (s_starts (msg, "/nonexistent/ferry.yaml: cannot open: "));
    FERRY_CHECK (ferry_config_load ("/", msg, sizeof msg) == NULL);
    FERRY_CHECK (s_starts (msg, "/: cannot read: "));
    return 0;
}

int ferry_config_units_test (bool verbose);
int
ferry_config_units_test (bool verbose)
{
    //  Each text set as "v=text" and read with the getter kind.
    static const struct {
        char kind;
        const char *text;
        int64_t value; /* -1: refused */
    } cases[] = {
        {'d', "250ms", 250}, {'d', "5s", 5000}, {'d', "1.5s", 1500},
        {'d', "0.25s", 250}, {'d', "2m", 120000}, {'d', "0.5m", 30000},
        {'d', "1h", 3600000}, {'d', "1.5h", 5400000}, {'d', "42", 42},
        {'d', "0", 0}, {'d', "0ms", 0}, {'d', "", -1}, {'d', "-1s", -1},
        {'d', "5 s", -1}, {'d', "1.5", -1}, {'d', "1.0005s", -1},
        {'d', "1.s", -1}, {'d', ".5s", -1}, {'d', "s", -1},
        {'d', "5sec", -1}, {'d', "5S", -1}, {'d', "1d", -1},
        {'d', "99999999999999999999h", -1}, {'d', "9999999999999999h", -1},
        {'z', "512", 512}, {'z', "512B", 512}, {'z', "64KiB", 65536},
        {'z', "1MiB", 1048576}, {'z', "17MiB", 17825792},
        {'z', "2GiB", 2147483648}, {'z', "10KB", 10000},
        {'z', "5MB", 5000000}, {'z', "1GB", 1000000000}, {'z', "0", 0},
        {'z', "1.5MiB", -1}, {'z', "1kib", -1}, {'z', "1K", -1},
        {'z', "-1", -1}, {'z', "1TiB", -1}, {'z', "64 KiB", -1},
        {'z', "18446744073709551616", -1}, {'z', "20000000000GiB", -1},
        {'b', "true", 1}, {'b', "True", 1}, {'b', "yes", 1}, {'b', "on", 1},
        {'b', "1", 1}, {'b', "false", 0}, {'b', "OFF", 0}, {'b', "no", 0},
        {'b', "0", 0}, {'b', "maybe", -1}, {'b', "2", -1}, {'b', "", -1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ferry_config_t *config = ferry_config_new ();
        char assignment[128];
        snprintf (assignment, sizeof assignment, "v=%s", cases[k].text);
        int64_t v = -7;
        int rc = ferry_config_set (config, assignment);
        if (rc == 0)
            rc = s_get_as (config, cases[k].kind, "v", 0, INT64_MAX, &v);
        ferry_config_destroy (&config);
        bool ok = cases[k].value == -1 ? rc == -1
                                       : rc == 0 && v == cases[k].value;
        if (!ok || verbose)
            fprintf (stderr, "# %c '%s': rc %d value %" PRId64 "%s\n",
                     cases[k].kind, cases[k].text, rc, v,
                     ok ? "" : " (unexpected)");
        FERRY_CHECK (ok);
    }
    //  The range and the unit show in the message.
    ferry_config_t *config = ferry_config_new ();
    int64_t v;
    FERRY_CHECK (ferry_config_set (config, "s=2MiB") == 0);
    FERRY_CHECK (s_get_as (config, 'z', "s", 1024, 1024 * 1024, &v) == -1);
    FERRY_CHECK (s_error_is (config,
                             "command line: s: 2MiB must be between 1KiB and "
                             "1MiB",
                             verbose));
    FERRY_CHECK (ferry_config_set (config, "d=250ms") == 0);
    FERRY_CHECK (s_get_as (config, 'd', "d", 0, 100, &v) == -1);
    FERRY_CHECK (s_error_is (config,
                             "command line: d: 250ms must be at most 100ms",
                             verbose));
    FERRY_CHECK (ferry_config_set (config, "d=x") == 0);
    FERRY_CHECK (s_get_as (config, 'd', "d", 0, 100, &v) == -1);
    FERRY_CHECK (s_error_is (config,
                             "command line: d: expected a duration such as "
                             "250ms, 5s, 1.5s, 2m or 1h, found 'x'",
                             verbose));
    ferry_config_destroy (&config);
    return 0;
}

int ferry_config_set_test (bool verbose);
int
ferry_config_set_test (bool verbose)
{
    ferry_config_t *config = s_sample_config ();
    FERRY_CHECK (config);
    int64_t i;

    //  Replacing a value: it now comes from the command line.
    FERRY_CHECK (ferry_config_set (config, "edge.listen=127.0.0.1:9090") == 0);
    FERRY_CHECK (s_str_is (config, NULL, "edge.listen", NULL,
                           "127.0.0.1:9090"));
    const ferry_cnode_t *listen = ferry_config_node (config, NULL,
                                                     "edge.listen");
    FERRY_CHECK (ferry_cnode_line (listen) == 0);
    FERRY_CHECK (strcmp (ferry_cnode_key (listen), "listen") == 0);
    FERRY_CHECK (strcmp (ferry_cnode_path (listen), "edge.listen") == 0);
    FERRY_CHECK (ferry_config_int (config, NULL, "edge.listen", 0, 1, 0, &i)
                 == -1);
    FERRY_CHECK (s_error_is (config,
                             "command line: edge.listen: expected an "
                             "integer, found '127.0.0.1:9090'",
                             verbose));
    //  The order of entries stays the file's.
    FERRY_CHECK (ferry_cnode_child (ferry_config_node (config, NULL, "edge"), 0)
                 == listen);

    //  New keys, with maps created on the way.
    FERRY_CHECK (ferry_config_set (config, "edge.extra.deep.key=5") == 0);
    FERRY_CHECK (ferry_config_int (config, NULL, "edge.extra.deep.key", 0, 10,
                                   0, &i)
                     == 0
                 && i == 5);
    FERRY_CHECK (strcmp (ferry_cnode_path (ferry_config_node (
                             config, NULL, "edge.extra.deep")),
                         "edge.extra.deep")
                 == 0);
    FERRY_CHECK (ferry_config_set (config, "metrics.port=9100") == 0);
    FERRY_CHECK (ferry_config_int (config, NULL, "metrics.port", 1, 65535, 0,
                                   &i)
                     == 0
                 && i == 9100);

    //  Flow collections.
    FERRY_CHECK (ferry_config_set (config,
                                   "pools.app.operations.get_user.params="
                                   "[a:int8, \"b:text=x\", c]")
                 == 0);
    const ferry_cnode_t *params = ferry_config_node (
        config, NULL, "pools.app.operations.get_user.params");
    FERRY_CHECK (ferry_cnode_type (params) == FERRY_CNODE_SEQ);
    FERRY_CHECK (ferry_cnode_size (params) == 3);
    FERRY_CHECK (strcmp (ferry_cnode_value (ferry_cnode_child (params, 1)),
                         "b:text=x")
                 == 0);
    FERRY_CHECK (strcmp (ferry_cnode_path (ferry_cnode_child (params, 2)),
                         "pools.app.operations.get_user.params[2]")
                 == 0);
    FERRY_CHECK (ferry_config_set (config,
                                   "edge.routes[0].query={limit: int, "
                                   "q: {type: string, required: true}}")
                 == 0);
    FERRY_CHECK (s_str_is (config, NULL, "edge.routes[0].query.q.type", NULL,
                           "string"));
    FERRY_CHECK (strcmp (ferry_cnode_path (ferry_config_node (
                             config, NULL, "edge.routes[0].query.q.required")),
                         "edge.routes[0].query.q.required")
                 == 0);

    //  Sequence items: existing ones, and appending at the end only.
    FERRY_CHECK (ferry_config_set (config, "edge.routes[1].timeout=2s") == 0);
    FERRY_CHECK (ferry_config_duration_ms (config, NULL,
                                           "edge.routes[1].timeout", 0,
                                           INT64_MAX, 0, &i)
                     == 0
                 && i == 2000);
    FERRY_CHECK (ferry_config_set (config,
                                   "edge.routes[2].route=GET /health/{x:uuid}")
                 == 0);
    FERRY_CHECK (ferry_cnode_size (ferry_config_node (config, NULL,
                                                      "edge.routes"))
                 == 3);
    FERRY_CHECK (s_str_is (config, NULL, "edge.routes[2].route", NULL,
                           "GET /health/{x:uuid}"));
    FERRY_CHECK (ferry_config_set (config, "edge.routes[5].route=x") == -1);
    FERRY_CHECK (s_error_is (config,
                             "command line: edge.routes: no item [5] to set "
                             "(the sequence has 3; [3] appends)",
                             verbose));

    //  Values: empty, quoted, with '=', a null, nested quotes.
    static const struct {
        const char *assignment, *path, *dflt, *want;
    } values[] = {
        {"lists.new[0]=first", "lists.new[0]", NULL, "first"},
        {"worker.pool=", "worker.pool", "d", ""},
        {"worker.database=host=/tmp port=5", "worker.database", NULL,
         "host=/tmp port=5"},
        {"x.q=\"a: b\"", "x.q", NULL, "a: b"},
        {"x.n=~", "x.n", "dflt", "dflt"},
    };
    for (size_t k = 0; k < sizeof values / sizeof values[0]; k++)
        FERRY_CHECK (ferry_config_set (config, values[k].assignment) == 0
                     && s_str_is (config, NULL, values[k].path,
                                  values[k].dflt, values[k].want));
    //  A null on the way is "nothing here yet".
    FERRY_CHECK (ferry_config_set (config, "x.n.deeper=1") == 0);
    FERRY_CHECK (ferry_config_int (config, NULL, "x.n.deeper", 0, 1, 0, &i)
                     == 0
                 && i == 1);

    //  Refused assignments (message NULL: not checked here) leave the tree
    //  as it was.
    FERRY_CHECK (ferry_config_set (config, "edge.listen=[1, 2") == -1);
    FERRY_CHECK (s_starts (ferry_config_error (config),
                           "command line: edge.listen: syntax error: "));
    FERRY_CHECK (s_str_is (config, NULL, "edge.listen", NULL,
                           "127.0.0.1:9090"));
    static const struct {
        const char *assignment;
        const char *message;
    } refused[] = {
        {"edge.listen=a: b",
         "command line: edge.listen: the value must be a scalar or a flow "
         "collection ([a, b] or {k: v}); quote it"},
        {"edge.listen=- a", NULL},
        {"edge.listen=&a 1",
         "command line: edge.listen: anchors (&a) are not supported; write "
         "the value out"},
        {"edge.listen=[*a]", NULL},
        {"edge.listen={a: 1, a: 2}",
         "command line: edge.listen.a: duplicate key"},
        {"log.level.x=1",
         "command line: log.level: expected a map, found a scalar"},
        {"edge[0]=1", NULL},
        {"noequals",
         "command line: 'noequals': expected PATH=VALUE, e.g. "
         "edge.listen=127.0.0.1:8080"},
        {"=1", NULL},
        {"a..b=1",
         "command line: 'a..b': invalid path (keys separated by '.', items "
         "as [N], e.g. edge.routes[0].timeout)"},
        {".a=1", NULL}, {"a.=1", NULL}, {"[0]=1", NULL}, {"a[x]=1", NULL},
        {"a[1=1", NULL}, {"a]b=1", NULL},
    };
    for (size_t k = 0; k < sizeof refused / sizeof refused[0]; k++) {
        FERRY_CHECK (ferry_config_set (config, refused[k].assignment) == -1);
        FERRY_CHECK (!refused[k].message
                     || s_error_is (config, refused[k].message, verbose));
        FERRY_CHECK (s_str_is (config, NULL, "edge.listen", NULL,
                               "127.0.0.1:9090"));
    }
    FERRY_CHECK (ferry_config_set (config, "a b=1") == 0);
    ferry_config_destroy (&config);
    return 0;
}

int ferry_config_unused_test (bool verbose);
int
ferry_config_unused_test (bool verbose)
{
    static const char text[] = "broker:\n"                          // 1
                               "  frontend: tcp://127.0.0.1:1\n"    // 2
                               "  servics:\n"                       // 3
                               "    app: {queue_limit: 4}\n"        // 4
                               "  services:\n"                      // 5
                               "    app: {queue_limit: 4}\n"        // 6
                               "    b: {queue_limit: 5, qeue: 1}\n" // 7
                               "edge:\n"                            // 8
                               "  listen: 127.0.0.1:1\n";           // 9
    ferry_config_t *config
        = ferry_config_parse (text, strlen (text), "u.yaml", NULL, 0);
    FERRY_CHECK (config);
    int64_t i;
    //  Nothing read yet: the first entry of the section.
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == -1);
    FERRY_CHECK (s_error_is (config,
                             "u.yaml:2: broker.frontend: unknown setting",
                             verbose));
    FERRY_CHECK (s_str_is (config, NULL, "broker.frontend", NULL,
                           "tcp://127.0.0.1:1"));
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == -1);
    FERRY_CHECK (s_error_is (config,
                             "u.yaml:3: broker.servics: unknown setting",
                             verbose));
    FERRY_CHECK (ferry_config_set (config, "broker.servics=") == 0);
    //  Entries reached through ferry_cnode_child count as read; the keys
    //  below them only when something reads them.
    const ferry_cnode_t *services = ferry_config_node (config, NULL,
                                                       "broker.services");
    for (size_t k = 0; k < ferry_cnode_size (services); k++)
        FERRY_CHECK (ferry_config_int (config, ferry_cnode_child (services, k),
                                       "queue_limit", 1, 10, 1, &i)
                     == 0);
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == -1);
    FERRY_CHECK (s_error_is (config, "command line: broker.servics: unknown "
                                     "setting",
                             verbose));
    FERRY_CHECK (s_str_is (config, NULL, "broker.servics", NULL, ""));
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == -1);
    FERRY_CHECK (s_error_is (config,
                             "u.yaml:7: broker.services.b.qeue: unknown "
                             "setting",
                             verbose));
    FERRY_CHECK (ferry_config_node (config, NULL, "broker.services.b.qeue"));
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == 0);
    //  Other sections are other daemons' business until asked.
    FERRY_CHECK (ferry_config_check_unused (config, "absent") == 0);
    FERRY_CHECK (ferry_config_check_unused (config, NULL) == -1);
    FERRY_CHECK (s_error_is (config, "u.yaml:8: edge: unknown setting",
                             verbose));
    FERRY_CHECK (ferry_config_check_unused (config, "edge") == -1);
    FERRY_CHECK (s_error_is (config, "u.yaml:9: edge.listen: unknown setting",
                             verbose));
    //  Looking for an absent key marks its map, so the typo is named, not
    //  the whole section.
    FERRY_CHECK (s_str_is (config, NULL, "edge.max", NULL, NULL));
    FERRY_CHECK (ferry_config_check_unused (config, NULL) == -1);
    FERRY_CHECK (s_error_is (config, "u.yaml:9: edge.listen: unknown setting",
                             verbose));
    FERRY_CHECK (ferry_cnode_value (ferry_config_node (config, NULL,
                                                       "edge.listen")));
    FERRY_CHECK (ferry_config_check_unused (config, NULL) == 0);
    FERRY_CHECK (ferry_config_check_unused (config, "edge.listen") == 0);
    FERRY_CHECK (ferry_config_check_unused (config, "edge.listen.x") == -1);
    ferry_config_destroy (&config);
    return 0;
}

int ferry_config_demo_test (bool verbose);
int
ferry_config_demo_test (bool verbose)
{
    const char *srcdir = getenv ("FERRY_SRCDIR");
    if (!srcdir || !*srcdir) {
        fprintf (stderr, "# skipped: FERRY_SRCDIR is not set (make check sets "
                         "it)\n");
        return 0;
    }
    char path[1024];
    snprintf (path, sizeof path, "%s/etc/ferry.yaml", srcdir);
    char err[1024];
    ferry_config_t *config = ferry_config_load (path, err, sizeof err);
    if (!config)
        fprintf (stderr, "# %s\n", err);
    FERRY_CHECK (config);
    //  Typed values, read as the daemons read them.
    static const struct {
        char kind;
        const char *path;
        int64_t min, max, value;
    } values[] = {
        {'b', "log.json", 0, 0, 0},
        {'z', "broker.max_message", 1, INT64_MAX, 17 * 1024 * 1024},
        {'d', "broker.no_worker_grace", 0, INT64_MAX, 2000},
        {'i', "broker.services.reports.queue_limit", 1, 1000000, 4},
        {'z', "edge.max_header_line", 1, INT64_MAX, 8192},
        {'i', "pools.app.operations.create_order.steps[0].not_found.status",
         100, 599, 422},
    };
    int64_t v;
    for (size_t k = 0; k < sizeof values / sizeof values[0]; k++)
        FERRY_CHECK (s_get_as (config, values[k].kind, values[k].path,
                               values[k].min, values[k].max, &v)
                         == 0
                     && v == values[k].value);
    const char *s;
    FERRY_CHECK (ferry_config_str (config, NULL, "log.level", NULL, &s) == 0);
    const ferry_cnode_t *routes = ferry_config_node (config, NULL,
                                                     "edge.routes");
    FERRY_CHECK (ferry_cnode_size (routes) >= 5);
    for (size_t k = 0; k < ferry_cnode_size (routes); k++) {
        const ferry_cnode_t *route = ferry_cnode_child (routes, k);
        FERRY_CHECK (ferry_config_str (config, route, "route", NULL, &s) == 0);
        FERRY_CHECK (s && (s_starts (s, "GET /") || s_starts (s, "POST /")));
        if (verbose)
            fprintf (stderr, "# route %s (line %zu)\n", s,
                     ferry_cnode_line (route));
    }
    FERRY_CHECK (s_str_is (config, NULL, "edge.routes[4].query.seconds.type",
                           NULL, "number"));
    FERRY_CHECK (s_str_is (config, NULL,
                           "pools.app.operations.create_user.params[0]", NULL,
                           "id:int8=null"));
    FERRY_CHECK (ferry_config_str (config, NULL,
                                   "pools.app.operations.list_users.sql", NULL,
                                   &s)
                 == 0);
    FERRY_CHECK (s && s_starts (s, "SELECT id, name") && !strchr (s, '\n'));
    FERRY_CHECK (s_str_is (config, NULL, "worker.pool", "x", ""));
    ferry_config_destroy (&config);
    return 0;
}

/*  Runs ferry_cli_load with stdout and stderr sent to a file, which is left
    in out (NUL-terminated, truncated to outlen).  args ends with NULL.  */
static int
s_cli (const char *const *args, const ferry_flag_t *flags,
       ferry_config_t **config_p, char *out, size_t outlen)
{
    char name[] = "/tmp/ferry-config-test-XXXXXX";
    int fd = mkstemp (name);
    assert (fd >= 0);
    unlink (name);
    fflush (stdout);
    fflush (stderr);
    int saved_out = dup (STDOUT_FILENO), saved_err = dup (STDERR_FILENO);
    dup2 (fd, STDOUT_FILENO);
    dup2 (fd, STDERR_FILENO);
    char *argv[16];
    int argc = 0;
    for (; args[argc]; argc++) {
        assert (argc < 15);
        argv[argc] = (char *) args[argc];
    }
    argv[argc] = NULL;
    int rc = ferry_cli_load (argc, argv, "ferry-test",
                             "Tests the command line.", flags, config_p);
    fflush (stdout);
    fflush (stderr);
    dup2 (saved_out, STDOUT_FILENO);
    dup2 (saved_err, STDERR_FILENO);
    close (saved_out);
    close (saved_err);
    ssize_t got = pread (fd, out, outlen - 1, 0);
    out[got > 0 ? got : 0] = '\0';
    close (fd);
    return rc;
}

int ferry_config_cli_test (bool verbose);
int
ferry_config_cli_test (bool verbose)
{
    static const ferry_flag_t flags[] = {
        {"listen", "edge.listen", "address to listen on"},
        {"loops", "edge.loops", "event loops"},
        {NULL, NULL, NULL},
    };
    char out[4096];
    ferry_config_t *config = NULL;
    //  Keep the caller's FERRY_CONFIG out of the way.
    char *saved_env = getenv ("FERRY_CONFIG");
    saved_env = saved_env ? ferry_strdup (saved_env) : NULL;
    unsetenv ("FERRY_CONFIG");

    const char *help[] = {"ferry-test", "--help", NULL};
    FERRY_CHECK (s_cli (help, flags, &config, out, sizeof out) == 1);
    FERRY_CHECK (config == NULL);
    if (verbose)
        for (const char *line = out; *line; line += strcspn (line, "\n") + 1)
            fprintf (stderr, "# %.*s\n", (int) strcspn (line, "\n"), line);
    FERRY_CHECK (s_starts (out, "Usage: ferry-test [OPTIONS]\nTests the "
                                "command line.\n"));
    FERRY_CHECK (strstr (out, "--listen VALUE"));
    FERRY_CHECK (strstr (out, "address to listen on (config: edge.listen)"));
    FERRY_CHECK (strstr (out, "--set PATH=VALUE"));
    FERRY_CHECK (strstr (out, "--log-level LEVEL"));
    FERRY_CHECK (strstr (out, "-c, --config FILE"));
    const char *help_short[] = {"ferry-test", "-h", NULL};
    FERRY_CHECK (s_cli (help_short, NULL, &config, out, sizeof out) == 1);
    const char *version[] = {"ferry-test", "--version", NULL};
    FERRY_CHECK (s_cli (version, flags, &config, out, sizeof out) == 1);
    FERRY_CHECK (strcmp (out, "ferry-test (ferry) " PACKAGE_VERSION "\n")
                 == 0);

    static const struct {
        const char *argv[6];
        const char *message;
    } bad[] = {
        {{"p", "--bogus"}, "ferry-test: unknown option '--bogus'"},
        {{"p", "--bogus=1"}, "ferry-test: unknown option '--bogus'"},
        {{"p", "-x"}, "ferry-test: unknown option '-x'"},
        {{"p", "extra"}, "ferry-test: unexpected argument 'extra'"},
        {{"p", "--loops", "2", "extra"}, "ferry-test: unexpected"},
        {{"p", "--set"}, "ferry-test: option '--set' needs a value"},
        {{"p", "-c"}, "ferry-test: option '-c' needs a value"},
        {{"p", "--set", "noeq"}, "ferry-test: command line: 'noeq': "},
        {{"p", "--listen", "[1"}, "ferry-test: command line: edge.listen: "
                                  "syntax error"},
        {{"p", "--config", "/nonexistent.yaml"},
         "ferry-test: /nonexistent.yaml: cannot open"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int rc = s_cli (bad[k].argv, flags, &config, out, sizeof out);
        bool ok = rc == -1 && config == NULL && s_starts (out, bad[k].message);
        if (!ok || verbose)
            fprintf (stderr, "# %s: rc %d: %s", bad[k].argv[1], rc, out);
        FERRY_CHECK (ok);
    }

    //  A file, then --set and flags in command-line order.
    char name[] = "/tmp/ferry-config-test-XXXXXX";
    int fd = mkstemp (name);
    FERRY_CHECK (fd >= 0);
    static const char yaml[] = "edge:\n  listen: 1.2.3.4:1\n  loops: 2\n"
                               "  routes: [{route: GET /a}]\n";
    FERRY_CHECK (write (fd, yaml, strlen (yaml)) == (ssize_t) strlen (yaml));
    close (fd);
    const char *good[] = {"p",         "--config",     name,
                          "--listen",  "127.0.0.1:9",  "--set",
                          "edge.loops=3", "--log-level", "debug",
                          "--loops",   "4",            NULL};
    int rc = s_cli (good, flags, &config, out, sizeof out);
    if (rc)
        fprintf (stderr, "# %s", out);
    FERRY_CHECK (rc == 0 && config);
    FERRY_CHECK (strcmp (ferry_config_source (config), name) == 0);
    int64_t i;
    FERRY_CHECK (s_str_is (config, NULL, "edge.listen", NULL, "127.0.0.1:9"));
    FERRY_CHECK (ferry_config_int (config, NULL, "edge.loops", 0, 64, 0, &i)
                     == 0
                 && i == 4);
    FERRY_CHECK (s_str_is (config, NULL, "log.level", NULL, "debug"));
    FERRY_CHECK (s_str_is (config, NULL, "edge.routes[0].route", NULL,
                           "GET /a"));
    ferry_config_destroy (&config);

    //  $FERRY_CONFIG stands in for --config; no file at all is empty.
    setenv ("FERRY_CONFIG", name, 1);
    const char *bare[] = {"p", "--set=edge.loops=7", NULL};
    FERRY_CHECK (s_cli (bare, flags, &config, out, sizeof out) == 0);
    FERRY_CHECK (s_str_is (config, NULL, "edge.listen", NULL, "1.2.3.4:1"));
    FERRY_CHECK (ferry_config_int (config, NULL, "edge.loops", 0, 64, 0, &i)
                     == 0
                 && i == 7);
    ferry_config_destroy (&config);
    unsetenv ("FERRY_CONFIG");
    const char *none[] = {"p", NULL};
    FERRY_CHECK (s_cli (none, NULL, &config, out, sizeof out) == 0);
    FERRY_CHECK (strcmp (ferry_config_source (config), "(none)") == 0);
    FERRY_CHECK (ferry_cnode_size (ferry_config_root (config)) == 0);
    ferry_config_destroy (&config);
    //  The file's own errors keep their file and line.
    fd = open (name, O_WRONLY | O_TRUNC);
    FERRY_CHECK (fd >= 0);
    FERRY_CHECK (write (fd, "a: 1\na: 2\n", 10) == 10);
    close (fd);
    const char *dup_args[] = {"p", "-c", name, NULL};
    FERRY_CHECK (s_cli (dup_args, flags, &config, out, sizeof out) == -1);
    char expected[256];
    snprintf (expected, sizeof expected,
              "ferry-test: %s:2: a: duplicate key (first at line 1)\n", name);
    FERRY_CHECK (strcmp (out, expected) == 0);
    unlink (name);

    if (saved_env)
        setenv ("FERRY_CONFIG", saved_env, 1);
    free (saved_env);
    return 0;
}
