/*  ferryctl.c: the operator's command line.

    For now one real subcommand, `migrate`, which brings a database up to
    the schema in the numbered SQL files (schemas/sql/NNNN_name.sql,
    installed into $(pkgdatadir)/sql).  The design is the usual ledger one:
    ferry.migrations records which versions ran and the SHA-256 of the file
    that ran, each pending file runs in its own transaction together with
    its ledger row (so a failed file leaves nothing behind and a rerun
    starts there), and a file that changed after it was applied is refused
    rather than silently ignored.  A session advisory lock serialises two
    ferryctl processes migrating the same database at once.

    `dlq list` and `dlq replay` read a Kafka dead-letter topic that a
    worker's consumer fills (docs/kafka.md, "Dead letters").  They read with
    a plain consumer assigned to every partition from its beginning to the
    high watermark seen at start: no group join and no commit, so looking
    at a dead-letter topic changes nothing, and the read ends.  Replay
    produces through ferry's idempotent producer (kafka.h) and waits for
    every delivery report before it says what it replayed.

    `status` asks a running broker for its state on its control socket
    (broker.control in the configuration, docs/broker.md): a DEALER sends
    FRY1 STATUS and prints the JSON answer as tables, or raw with --json.
    A broker that does not answer within two seconds is an error, not an
    empty table, so scripts can tell "down" from "idle".

    Exit codes: 0 success, 1 failure, 2 usage error.  */

#include "config.h"
#include "ferry.h"
#include "kafka.h"
#include "log.h"
#include "proto.h"

#include <czmq.h>
#include <jansson.h>

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#ifndef FERRY_SQLDIR
#define FERRY_SQLDIR "/usr/local/share/ferry/sql"
#endif

#define EXIT_USAGE 2

/*  Key of the advisory lock that serialises migrations: "ferry" in ASCII,
    so it is recognisable in pg_locks and unlikely to meet another user's. */
#define MIGRATE_LOCK_KEY "439788663417"

/*  Migration files are ours and small; the bound only keeps a stray large
    file from being read into memory whole.  */
#define MIGRATION_MAX_BYTES (16 * 1024 * 1024)

/*  Files with more digits in their version are not migrations.  */
#define VERSION_MAX_DIGITS 9

/*  One file found in the migrations directory.  */
typedef struct {
    int version;     /* the leading number, e.g. 2 for 0002_demo.sql */
    char *name;      /* file name without ".sql", e.g. "0002_demo" */
    char *path;      /* directory + "/" + file name */
} migration_t;

static const char *s_usage =
    "Usage: ferryctl [--help] [--version] COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  migrate [--database CONNINFO] [--dir DIR]\n"
    "        Apply the SQL migrations in DIR that the database has not run\n"
    "        yet, each in its own transaction, and record them in\n"
    "        ferry.migrations.  Refuses to go on when a file that was\n"
    "        already applied has changed.\n"
    "        CONNINFO: a libpq connection string or URI; by default the\n"
    "        PG* environment variables (PGHOST, PGPORT, PGDATABASE, ...).\n"
    "        DIR: default $FERRY_SQLDIR, else " FERRY_SQLDIR ".\n"
    "  dlq list TOPIC [--bootstrap HOST:PORT] [--property NAME=VALUE ...]\n"
    "                 [--limit N]\n"
    "        Print the messages of a dead-letter topic: partition, offset,\n"
    "        key, the ferry-* headers and a preview of the value.\n"
    "  dlq replay TOPIC [--offset N] [--partition P] [--bootstrap ...]\n"
    "                   [--property ...]\n"
    "        Produce the dead letters (all, or those at offset N) back to\n"
    "        their ferry-original-topic, without the ferry-error,\n"
    "        ferry-attempts and ferry-original-* headers.\n"
    "        --property: any librdkafka property (security.protocol, ...);\n"
    "        --bootstrap H:P is bootstrap.servers (default 127.0.0.1:9092).\n"
    "  status [-c FILE] [--endpoint ENDPOINT] [--json]\n"
    "        Print the broker's services (queue, workers, in flight,\n"
    "        breaker) and workers (credit, in flight, breaker, idle time)\n"
    "        from its control socket, broker.control in FILE (default\n"
    "        $FERRY_CONFIG); --endpoint names the socket instead.  --json\n"
    "        prints the broker's JSON as it came.  Fails (exit 1) when\n"
    "        the broker does not answer within 2 s.\n"
    "  help  Print this help.\n"
    "\n"
    "Exit status: 0 success, 1 failure, 2 usage error.\n";

/* ---- migration files ----------------------------------------------------- */

/*  Returns the version of a migration file name ("NNNN_name.sql") or -1
    when the name is not one (other files in the directory are ignored).  */
static int
s_migration_version (const char *file)
{
    size_t digits = strspn (file, "0123456789");
    if (digits == 0 || digits > VERSION_MAX_DIGITS || file[digits] != '_')
        return -1;
    size_t len = strlen (file);
    if (len < digits + 1 + 1 + 4 || strcmp (file + len - 4, ".sql") != 0)
        return -1;
    for (size_t i = digits + 1; i < len - 4; i++) {
        char c = file[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return -1;
    }
    int64_t version;
    char num[VERSION_MAX_DIGITS + 1];
    memcpy (num, file, digits);
    num[digits] = '\0';
    if (ferry_parse_int64 (num, &version) != 0 || version <= 0)
        return -1;
    return (int) version;
}

static int
s_migration_compare (const void *a, const void *b)
{
    const migration_t *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

static void
s_migrations_free (migration_t *list, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free (list[i].name);
        free (list[i].path);
    }
    free (list);
}

/*  Lists the migration files of dir in version order.  Returns 0 with
    *list_p (owned by the caller, free with s_migrations_free) and *count_p
    set, or -1 after logging why (unreadable directory, two files with the
    same version).  */
static int
s_migrations_scan (const char *dir, migration_t **list_p, size_t *count_p)
{
    DIR *handle = opendir (dir);
    if (!handle) {
        log_error ("cannot open migrations directory %s: %s", dir,
                   strerror (errno));
        return -1;
    }
    migration_t *list = NULL;
    size_t count = 0, cap = 0;
    struct dirent *entry;
    while ((entry = readdir (handle))) {
        int version = s_migration_version (entry->d_name);
        if (version < 0)
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            list = ferry_realloc (list, cap * sizeof *list);
        }
        size_t len = strlen (entry->d_name);
        list[count].version = version;
        list[count].name = ferry_strndup (entry->d_name, len - 4);
        list[count].path = ferry_malloc (strlen (dir) + 1 + len + 1);
        sprintf (list[count].path, "%s/%s", dir, entry->d_name);
        count++;
    }
    closedir (handle);
    if (count > 0)
        qsort (list, count, sizeof *list, s_migration_compare);
    for (size_t i = 1; i < count; i++)
        if (list[i].version == list[i - 1].version) {
            log_error ("%s and %s have the same version %d", list[i - 1].name,
                       list[i].name, list[i].version);
            s_migrations_free (list, count);
            return -1;
        }
    *list_p = list;
    *count_p = count;
    return 0;
}

/*  Reads a whole migration file into a NUL-terminated buffer that the
    caller frees.  Returns NULL after logging why.  A NUL byte inside the
    file is refused: the text goes to the server as a C string.  */
static char *
s_file_read (const char *path, size_t *len_p)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        log_error ("cannot open %s: %s", path, strerror (errno));
        return NULL;
    }
    char *text = ferry_malloc (MIGRATION_MAX_BYTES + 1);
    size_t len = fread (text, 1, MIGRATION_MAX_BYTES + 1, file);
    bool failed = ferror (file) != 0;
    fclose (file);
    if (failed) {
        log_error ("cannot read %s", path);
        free (text);
        return NULL;
    }
    if (len > MIGRATION_MAX_BYTES) {
        log_error ("%s is larger than %d bytes", path, MIGRATION_MAX_BYTES);
        free (text);
        return NULL;
    }
    if (memchr (text, '\0', len)) {
        log_error ("%s contains a NUL byte", path);
        free (text);
        return NULL;
    }
    text[len] = '\0';
    *len_p = len;
    return text;
}

/* ---- database ------------------------------------------------------------ */

/*  Logs "what: message" for a libpq message, without the newline libpq
    ends its messages with.  */
static void
s_log_pg (const char *what, const char *message)
{
    int len = (int) strlen (message);
    while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == ' '))
        len--;
    log_error ("%s: %.*s", what, len, message);
}

/*  Runs one command without parameters; returns 0 when it succeeded, or -1
    after logging `what` and the server's message.  */
static int
s_exec (PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec (conn, sql);
    ExecStatusType status = PQresultStatus (res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        s_log_pg (what, PQresultErrorMessage (res));
        PQclear (res);
        return -1;
    }
    PQclear (res);
    return 0;
}

/*  SHA-256 of the file's bytes, as lowercase hex, computed by the server:
    libpq has no hash function and the server is there anyway.  The bytes
    travel as a binary bytea parameter, so nothing is reinterpreted.
    Returns a string the caller frees, or NULL after logging.  */
static char *
s_checksum (PGconn *conn, const char *text, size_t len)
{
    const char *values[1] = {text};
    int lengths[1] = {(int) len};
    int formats[1] = {1};
    Oid types[1] = {17}; /* bytea */
    PGresult *res = PQexecParams (conn,
                                  "SELECT encode(sha256($1), 'hex')", 1,
                                  types, values, lengths, formats, 0);
    if (PQresultStatus (res) != PGRES_TUPLES_OK || PQntuples (res) != 1) {
        s_log_pg ("checksum", PQresultErrorMessage (res));
        PQclear (res);
        return NULL;
    }
    char *sum = ferry_strdup (PQgetvalue (res, 0, 0));
    PQclear (res);
    return sum;
}

/*  Brings the ledger into existence.  Runs under the advisory lock, so
    two ferryctl processes never race on the CREATEs.  */
static int
s_ledger_create (PGconn *conn)
{
    return s_exec (conn,
                   "CREATE SCHEMA IF NOT EXISTS ferry;"
                   "CREATE TABLE IF NOT EXISTS ferry.migrations ("
                   "  version int PRIMARY KEY,"
                   "  name text NOT NULL,"
                   "  checksum text NOT NULL,"
                   "  applied_at timestamptz NOT NULL DEFAULT now())",
                   "cannot create the ferry.migrations ledger");
}

/*  Runs one migration file and records it, in one transaction.  Returns 0
    on success; -1 after logging (the transaction is rolled back).  */
static int
s_apply (PGconn *conn, const migration_t *m, const char *text,
         const char *checksum)
{
    if (s_exec (conn, "BEGIN", "BEGIN") != 0)
        return -1;
    PGresult *res = PQexec (conn, text);
    ExecStatusType status = PQresultStatus (res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        s_log_pg (m->name, PQresultErrorMessage (res));
        PQclear (res);
        s_exec (conn, "ROLLBACK", "ROLLBACK");
        return -1;
    }
    PQclear (res);

    char version[16];
    snprintf (version, sizeof version, "%d", m->version);
    const char *values[3] = {version, m->name, checksum};
    res = PQexecParams (conn,
                        "INSERT INTO ferry.migrations (version, name, checksum)"
                        " VALUES ($1::int, $2, $3)",
                        3, NULL, values, NULL, NULL, 0);
    if (PQresultStatus (res) != PGRES_COMMAND_OK) {
        s_log_pg ("cannot record the migration", PQresultErrorMessage (res));
        PQclear (res);
        s_exec (conn, "ROLLBACK", "ROLLBACK");
        return -1;
    }
    PQclear (res);
    return s_exec (conn, "COMMIT", m->name);
}

/*  Finds version in the ledger result (columns version, name, checksum).
    Returns the row or -1.  */
static int
s_ledger_find (const PGresult *ledger, int version)
{
    char want[16];
    snprintf (want, sizeof want, "%d", version);
    for (int row = 0; row < PQntuples (ledger); row++)
        if (strcmp (PQgetvalue (ledger, row, 0), want) == 0)
            return row;
    return -1;
}

/*  The migrate subcommand on an open connection.  Returns 0 or -1.  */
static int
s_migrate (PGconn *conn, const char *dir)
{
    migration_t *list = NULL;
    size_t count = 0;
    if (s_migrations_scan (dir, &list, &count) != 0)
        return -1;
    if (count == 0) {
        log_error ("no migrations (NNNN_name.sql) in %s", dir);
        s_migrations_free (list, count);
        return -1;
    }
    /*  "relation already exists, skipping" notices are noise here.  */
    if (s_exec (conn, "SET client_min_messages = warning", "SET") != 0
        || s_exec (conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")",
                   "cannot take the migration lock") != 0
        || s_ledger_create (conn) != 0) {
        s_migrations_free (list, count);
        return -1;
    }
    PGresult *ledger = PQexec (conn,
                               "SELECT version, name, checksum"
                               " FROM ferry.migrations ORDER BY version");
    if (PQresultStatus (ledger) != PGRES_TUPLES_OK) {
        s_log_pg ("cannot read ferry.migrations",
                  PQresultErrorMessage (ledger));
        PQclear (ledger);
        s_migrations_free (list, count);
        return -1;
    }

    int rc = 0;
    size_t applied = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        const migration_t *m = &list[i];
        size_t len = 0;
        char *text = s_file_read (m->path, &len);
        char *sum = text ? s_checksum (conn, text, len) : NULL;
        if (!sum) {
            free (text);
            rc = -1;
            break;
        }
        int row = s_ledger_find (ledger, m->version);
        if (row >= 0) {
            /*  Applied before: the file must be the one that ran, or the
                database and the files no longer describe the same schema. */
            if (strcmp (PQgetvalue (ledger, row, 2), sum) != 0) {
                log_error ("%s was changed after it was applied (checksum %s,"
                           " recorded %s): add a new migration instead",
                           m->name, sum, PQgetvalue (ledger, row, 2));
                rc = -1;
            }
            else if (strcmp (PQgetvalue (ledger, row, 1), m->name) != 0)
                log_warn ("version %d was applied as %s, the file is now %s",
                          m->version, PQgetvalue (ledger, row, 1), m->name);
        }
        else if (s_apply (conn, m, text, sum) == 0) {
            printf ("applied %s\n", m->name);
            fflush (stdout);
            applied++;
        }
        else
            rc = -1;
        free (sum);
        free (text);
    }
    if (rc == 0) {
        /*  A version in the ledger without its file: a downgrade or a
            partial installation.  Worth saying, not worth refusing.  */
        for (int row = 0; row < PQntuples (ledger); row++) {
            int64_t version;
            if (ferry_parse_int64 (PQgetvalue (ledger, row, 0), &version) != 0)
                continue;
            bool found = false;
            for (size_t i = 0; i < count; i++)
                found = found || list[i].version == version;
            if (!found)
                log_warn ("%s is applied but its file is not in %s",
                          PQgetvalue (ledger, row, 1), dir);
        }
        if (applied == 0)
            printf ("up to date\n");
    }
    PQclear (ledger);
    s_migrations_free (list, count);
    /*  The lock goes with the session; releasing it early is courtesy.  */
    s_exec (conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")",
            "cannot release the migration lock");
    return rc;
}

static int
s_cmd_migrate (int argc, char **argv)
{
    static const struct option options[] = {
        {"database", required_argument, NULL, 'd'},
        {"dir", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *conninfo = "";
    const char *dir = getenv ("FERRY_SQLDIR");
    if (!dir || !*dir)
        dir = FERRY_SQLDIR;
    int opt;
    optind = 1;
    argv[0] = (char *) "ferryctl migrate"; /* for getopt's messages */
    while ((opt = getopt_long (argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'd':
            conninfo = optarg;
            break;
        case 'D':
            dir = optarg;
            break;
        case 'h':
            fputs (s_usage, stdout);
            return EXIT_SUCCESS;
        default:
            fputs ("Try 'ferryctl --help'.\n", stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "ferryctl migrate: unexpected argument '%s'\n",
                 argv[optind]);
        return EXIT_USAGE;
    }

    PGconn *conn = PQconnectdb (conninfo);
    if (!conn || PQstatus (conn) != CONNECTION_OK) {
        /*  The operator's own connection: its message helps them and
            names no secret they did not type.  */
        s_log_pg ("cannot connect to PostgreSQL",
                  conn ? PQerrorMessage (conn) : "out of memory");
        PQfinish (conn);
        return EXIT_FAILURE;
    }
    int rc = s_migrate (conn, dir);
    PQfinish (conn);
    return rc == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- dlq ----------------------------------------------------------------- */

/*  How long a dlq command waits for the cluster (metadata, watermarks,
    messages, delivery reports) before it gives up.  */
#define DLQ_TIMEOUT_MS 30000

/*  Bytes of a value that `dlq list` prints.  */
#define DLQ_PREVIEW 120

/*  The headers a worker adds to a dead letter; replay drops them.  */
static bool
s_dlq_header (const char *name)
{
    return strcmp (name, "ferry-error") == 0
           || strcmp (name, "ferry-attempts") == 0
           || strncmp (name, "ferry-original-", 15) == 0;
}

/*  Prints size bytes of data on one line: printable ASCII as is, the rest
    as '.', cut at max with "...".  */
static void
s_preview (const void *data, size_t size, size_t max)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < size && i < max; i++)
        putchar (p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '.');
    if (size > max)
        fputs ("...", stdout);
}

/*  A header's value as a string (NULL when absent or too long).  */
static const char *
s_header (const rd_kafka_message_t *m, const char *name, char *buf,
          size_t buflen)
{
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t size;
    if (rd_kafka_message_headers (m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR
        || rd_kafka_header_get_last (hdrs, name, &val, &size)
               != RD_KAFKA_RESP_ERR_NO_ERROR
        || !val || size >= buflen)
        return NULL;
    memcpy (buf, val, size);
    buf[size] = '\0';
    return buf;
}

/*  A configuration from --bootstrap and the --property items.  Returns
    NULL after printing why.  */
static rd_kafka_conf_t *
s_dlq_conf (const char *bootstrap, char **props, size_t nprops)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    char err[512];
    if (rd_kafka_conf_set (conf, "bootstrap.servers", bootstrap, err,
                           sizeof err) != RD_KAFKA_CONF_OK)
        goto fail;
    for (size_t i = 0; i < nprops; i++) {
        char *eq = strchr (props[i], '=');
        if (!eq) {
            snprintf (err, sizeof err, "--property %s: expected NAME=VALUE",
                      props[i]);
            goto fail;
        }
        *eq = '\0';
        rd_kafka_conf_res_t rc = rd_kafka_conf_set (conf, props[i], eq + 1,
                                                    err, sizeof err);
        *eq = '=';
        if (rc != RD_KAFKA_CONF_OK)
            goto fail;
    }
    return conf;
fail:
    fprintf (stderr, "ferryctl dlq: %s\n", err);
    rd_kafka_conf_destroy (conf);
    return NULL;
}

/*  The delivery reports of a replay.  */
typedef struct {
    int pending;
    int failed;
} dlq_replay_t;

static void
s_dlq_delivered (void *opaque, rd_kafka_resp_err_t err, void *arg)
{
    dlq_replay_t *state = arg;
    char *what = opaque;
    state->pending--;
    if (err) {
        state->failed++;
        fprintf (stderr, "ferryctl dlq replay: %s not delivered: %s\n", what,
                 rd_kafka_err2str (err));
    } else
        printf ("replayed %s\n", what);
    free (what);
}

/*  Produces one dead letter back to its original topic.  Returns 0 when
    queued.  */
static int
s_dlq_replay_one (ferry_kafka_producer_t *producer, dlq_replay_t *state,
                  const rd_kafka_message_t *m)
{
    char topic[256];
    if (!s_header (m, "ferry-original-topic", topic, sizeof topic)) {
        fprintf (stderr, "ferryctl dlq replay: partition %" PRId32
                 " offset %" PRId64 " has no ferry-original-topic header\n",
                 m->partition, m->offset);
        return -1;
    }
    rd_kafka_headers_t *hdrs = NULL;
    size_t n = 0;
    if (rd_kafka_message_headers (m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
        n = rd_kafka_header_cnt (hdrs);
    ferry_kafka_header_t *h = ferry_calloc (n ? n : 1, sizeof *h);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *val;
        size_t size;
        if (!rd_kafka_header_get_all (hdrs, i, &name, &val, &size)
            && !s_dlq_header (name))
            h[count++] = (ferry_kafka_header_t) {name, val, size};
    }
    char what[400];
    snprintf (what, sizeof what, "partition=%" PRId32 " offset=%" PRId64
              " to %s", m->partition, m->offset, topic);
    char *opaque = ferry_strdup (what);
    int rc = ferry_kafka_producer_send (producer, topic, m->key, m->key_len,
                                        m->payload, m->len, h, count, opaque);
    free (h);
    if (rc) {
        fprintf (stderr, "ferryctl dlq replay: %s not sent: %s\n", what,
                 rd_kafka_err2str (ferry_kafka_producer_last_error (producer)));
        free (opaque);
        return -1;
    }
    state->pending++;
    return 0;
}

static void
s_dlq_print (const rd_kafka_message_t *m)
{
    printf ("partition=%" PRId32 " offset=%" PRId64 " key=", m->partition,
            m->offset);
    if (m->key)
        s_preview (m->key, m->key_len, DLQ_PREVIEW);
    else
        fputs ("(null)", stdout);
    putchar ('\n');
    rd_kafka_headers_t *hdrs;
    if (rd_kafka_message_headers (m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t size;
        for (size_t i = 0;
             !rd_kafka_header_get_all (hdrs, i, &name, &val, &size); i++)
            if (strncmp (name, "ferry-", 6) == 0) {
                printf ("  %s: ", name);
                s_preview (val, val ? size : 0, DLQ_PREVIEW);
                putchar ('\n');
            }
    }
    printf ("  value: ");
    s_preview (m->payload, m->payload ? m->len : 0, DLQ_PREVIEW);
    printf ("\n");
}

/*  Reads topic from the beginning to the high watermarks seen at start;
    lists (replay false) or replays each message that matches (offset and
    partition, -1 = any), at most limit (0 = no limit).  Returns an exit
    status.  */
static int
s_dlq_run (rd_kafka_conf_t *conf, rd_kafka_conf_t *pconf, const char *topic,
           bool replay, int64_t offset, int64_t partition, int64_t limit)
{
    char err[512];
    int status = EXIT_FAILURE;
    ferry_kafka_producer_t *producer = NULL;
    dlq_replay_t state = {0, 0};
    /*  A group id that is never joined: assign() needs none, but the
        offset APIs of some librdkafka versions want one.  */
    rd_kafka_conf_set (conf, "group.id", "ferryctl-dlq", err, sizeof err);
    rd_kafka_conf_set (conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set (conf, "enable.partition.eof", "false", err,
                       sizeof err);
    rd_kafka_t *rk = rd_kafka_new (RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf (stderr, "ferryctl dlq: %s\n", err);
        rd_kafka_conf_destroy (conf);
        rd_kafka_conf_destroy (pconf);
        return EXIT_FAILURE;
    }
    rd_kafka_poll_set_consumer (rk);
    if (replay) {
        producer = ferry_kafka_producer_new (&pconf, s_dlq_delivered, &state,
                                             err, sizeof err);
        if (!producer) {
            fprintf (stderr, "ferryctl dlq replay: %s\n", err);
            goto done;
        }
    } else
        rd_kafka_conf_destroy (pconf);
    pconf = NULL;

    rd_kafka_topic_t *rkt = rd_kafka_topic_new (rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t rc = rd_kafka_metadata (rk, 0, rkt, &md,
                                                DLQ_TIMEOUT_MS);
    rd_kafka_topic_destroy (rkt);
    if (rc || md->topic_cnt != 1 || md->topics[0].err) {
        fprintf (stderr, "ferryctl dlq: topic %s: %s\n", topic,
                 rd_kafka_err2str (rc ? rc : md->topics[0].err));
        if (md)
            rd_kafka_metadata_destroy (md);
        goto done;
    }
    int nparts = md->topics[0].partition_cnt;
    int64_t *high = ferry_calloc ((size_t) nparts + 1, sizeof *high);
    rd_kafka_topic_partition_list_t *parts
        = rd_kafka_topic_partition_list_new (nparts);
    int open = 0;       /* partitions not read to their high mark yet */
    for (int i = 0; i < nparts; i++) {
        int32_t id = md->topics[0].partitions[i].id;
        int64_t low;
        if (partition >= 0 && id != partition)
            continue;
        rc = rd_kafka_query_watermark_offsets (rk, topic, id, &low, &high[i],
                                               DLQ_TIMEOUT_MS);
        if (rc) {
            fprintf (stderr, "ferryctl dlq: %s [%d]: %s\n", topic, id,
                     rd_kafka_err2str (rc));
            rd_kafka_topic_partition_list_destroy (parts);
            rd_kafka_metadata_destroy (md);
            free (high);
            goto done;
        }
        /*  Only partitions that hold what is asked: a fetch past the
            end would wait for a message that never comes.  */
        if (high[i] > low
            && (offset < 0 || (offset >= low && offset < high[i]))) {
            rd_kafka_topic_partition_list_add (parts, topic, id)->offset
                = offset >= 0 ? offset : low;
            open++;
        }
    }
    int64_t found = 0;
    int64_t t0 = ferry_mono_ms ();
    bool failed = false;
    rc = open ? rd_kafka_assign (rk, parts) : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (rc) {
        fprintf (stderr, "ferryctl dlq: assign: %s\n", rd_kafka_err2str (rc));
        failed = true;
        open = 0;
    }
    while (open > 0 && (!limit || found < limit)) {
        if (ferry_mono_ms () - t0 > DLQ_TIMEOUT_MS) {
            fprintf (stderr, "ferryctl dlq: %s not read to its end within "
                     "%d s\n", topic, DLQ_TIMEOUT_MS / 1000);
            failed = true;
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll (rk, 200);
        if (!m)
            continue;
        if (m->err) {
            fprintf (stderr, "ferryctl dlq: %s\n", rd_kafka_message_errstr (m));
            rd_kafka_message_destroy (m);
            failed = true;
            break;
        }
        int idx = -1;
        for (int i = 0; i < nparts; i++)
            if (md->topics[0].partitions[i].id == m->partition)
                idx = i;
        bool last = idx >= 0 && m->offset + 1 >= high[idx];
        if (offset < 0 || m->offset == offset) {
            found++;
            if (!replay)
                s_dlq_print (m);
            else if (s_dlq_replay_one (producer, &state, m))
                failed = true;
        }
        /*  A partition is done at its high mark, or past the one offset
            asked for.  */
        if (last || (offset >= 0 && m->offset >= offset)) {
            rd_kafka_topic_partition_list_t *one
                = rd_kafka_topic_partition_list_new (1);
            rd_kafka_topic_partition_list_add (one, topic, m->partition);
            rd_kafka_pause_partitions (rk, one);
            rd_kafka_topic_partition_list_destroy (one);
            open--;
        }
        rd_kafka_message_destroy (m);
    }
    rd_kafka_topic_partition_list_destroy (parts);
    rd_kafka_metadata_destroy (md);
    free (high);
    while (producer && state.pending > 0
           && ferry_mono_ms () - t0 < 2 * DLQ_TIMEOUT_MS) {
        struct pollfd pfd = {ferry_kafka_producer_fd (producer), POLLIN, 0};
        poll (&pfd, 1, 100);
        ferry_kafka_producer_poll (producer);
    }
    if (replay && offset >= 0 && found == 0) {
        fprintf (stderr, "ferryctl dlq replay: no message at offset %" PRId64
                 " in %s\n", offset, topic);
        failed = true;
    }
    if (!replay && found == 0)
        printf ("no dead letters in %s\n", topic);
    status = failed ? EXIT_FAILURE : EXIT_SUCCESS;
done:
    /*  Reports anything still pending (as failed) before we judge.  */
    ferry_kafka_producer_destroy (&producer);
    if (state.failed)
        status = EXIT_FAILURE;
    if (pconf)
        rd_kafka_conf_destroy (pconf);
    rd_kafka_consumer_close (rk);
    rd_kafka_destroy (rk);
    return status;
}

static int
s_cmd_dlq (int argc, char **argv)
{
    static const struct option options[] = {
        {"bootstrap", required_argument, NULL, 'b'},
        {"property", required_argument, NULL, 'X'},
        {"limit", required_argument, NULL, 'l'},
        {"offset", required_argument, NULL, 'o'},
        {"partition", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    if (argc < 2 || (strcmp (argv[1], "list") != 0
                     && strcmp (argv[1], "replay") != 0)) {
        fputs ("ferryctl dlq: expected 'list' or 'replay'\n"
               "Try 'ferryctl --help'.\n", stderr);
        return EXIT_USAGE;
    }
    bool replay = strcmp (argv[1], "replay") == 0;
    argc--;
    argv++;
    const char *bootstrap = "127.0.0.1:9092";
    char **props = ferry_calloc ((size_t) argc, sizeof *props);
    size_t nprops = 0;
    int64_t limit = 0, offset = -1, partition = -1;
    int opt;
    optind = 1;
    argv[0] = (char *) (replay ? "ferryctl dlq replay" : "ferryctl dlq list");
    int rc = -1;
    while (rc < 0
           && (opt = getopt_long (argc, argv, "", options, NULL)) != -1) {
        int64_t *num = NULL;
        switch (opt) {
        case 'b':
            bootstrap = optarg;
            break;
        case 'X':
            props[nprops++] = optarg;
            break;
        case 'l':
            num = &limit;
            break;
        case 'o':
            num = &offset;
            break;
        case 'p':
            num = &partition;
            break;
        case 'h':
            fputs (s_usage, stdout);
            rc = EXIT_SUCCESS;
            break;
        default:
            fputs ("Try 'ferryctl --help'.\n", stderr);
            rc = EXIT_USAGE;
        }
        if (num && (ferry_parse_int64 (optarg, num) || *num < 0)) {
            fprintf (stderr, "%s: not a number: '%s'\n", argv[0], optarg);
            rc = EXIT_USAGE;
        }
    }
    if (rc < 0 && (optind != argc - 1 || !*argv[optind])) {
        fprintf (stderr, "%s: expected one TOPIC\n", argv[0]);
        rc = EXIT_USAGE;
    }
    if (rc < 0 && !replay && (offset >= 0 || partition >= 0)) {
        fprintf (stderr, "%s: --offset and --partition are for replay\n",
                 argv[0]);
        rc = EXIT_USAGE;
    }
    if (rc < 0 && replay && limit) {
        fprintf (stderr, "%s: --limit is for list\n", argv[0]);
        rc = EXIT_USAGE;
    }
    if (rc < 0) {
        rd_kafka_conf_t *conf = s_dlq_conf (bootstrap, props, nprops);
        rd_kafka_conf_t *pconf = conf ? rd_kafka_conf_dup (conf) : NULL;
        rc = !conf ? EXIT_USAGE
                   : s_dlq_run (conf, pconf, argv[optind], replay, offset,
                                partition, limit);
    }
    free (props);
    return rc;
}

/* ---- status --------------------------------------------------------------- */

/*  How long status waits for the broker's answer.  */
#define STATUS_TIMEOUT_MS 2000

/*  Asks the broker at endpoint for its status.  Returns the JSON text
    (caller frees), or NULL after saying why on stderr.  */
static char *
s_status_query (const char *endpoint)
{
    zsys_set_logstream (NULL);
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock || zsock_connect (sock, "%s", endpoint) == -1) {
        fprintf (stderr, "ferryctl status: cannot connect to '%s': %s\n",
                 endpoint, zmq_strerror (zmq_errno ()));
        zsock_destroy (&sock);
        return NULL;
    }
    zsock_set_linger (sock, 0);
    zsock_set_sndtimeo (sock, STATUS_TIMEOUT_MS);
    zsock_set_rcvtimeo (sock, STATUS_TIMEOUT_MS);
    char *json = NULL;
    if (zstr_sendx (sock, FERRY_PROTO, FERRY_CMD_STATUS, NULL) == 0) {
        zmsg_t *reply = zmsg_recv (sock);
        char *proto = reply ? zmsg_popstr (reply) : NULL;
        char *command = reply ? zmsg_popstr (reply) : NULL;
        if (proto && command && streq (proto, FERRY_PROTO)
            && streq (command, FERRY_CMD_STATUS) && zmsg_size (reply) == 1)
            json = zmsg_popstr (reply);
        free (proto);
        free (command);
        zmsg_destroy (&reply);
    }
    if (!json)
        fprintf (stderr,
                 "ferryctl status: no answer from the broker at %s within "
                 "%d s (is it running, with broker.control set?)\n",
                 endpoint, STATUS_TIMEOUT_MS / 1000);
    zsock_destroy (&sock);
    return json;
}

/*  The string member key of item, "-" when absent.  */
static const char *
s_json_str (json_t *item, const char *key)
{
    const char *value = json_string_value (json_object_get (item, key));
    return value && *value ? value : "-";
}

static long long
s_json_int (json_t *item, const char *key)
{
    return (long long) json_integer_value (json_object_get (item, key));
}

/*  Widest value of the string member key over list, at least min.  */
static int
s_json_width (json_t *list, const char *key, int min)
{
    int width = min;
    for (size_t i = 0; i < json_array_size (list); i++) {
        int len = (int) strlen (s_json_str (json_array_get (list, i), key));
        if (len > width)
            width = len;
    }
    return width;
}

/*  Prints the status as two tables.  Returns 0, or -1 when json is not
    the broker's status object.  */
static int
s_status_print (const char *json)
{
    json_error_t error;
    json_t *root = json_loads (json, 0, &error);
    json_t *services = json_object_get (root, "services");
    json_t *workers = json_object_get (root, "workers");
    if (!json_is_object (root) || !json_is_array (services)
        || !json_is_array (workers)) {
        fprintf (stderr, "ferryctl status: the broker's answer is not a "
                         "status object\n");
        json_decref (root);
        return -1;
    }
    printf ("broker: inflight %lld/%lld, edges %lld%s\n\n",
            s_json_int (root, "inflight"), s_json_int (root, "inflight_max"),
            s_json_int (root, "edges"),
            json_is_true (json_object_get (root, "draining")) ? ", draining"
                                                               : "");
    int name = s_json_width (services, "name", 7);
    printf ("%-*s %8s %9s %7s %5s %8s  %s\n", name, "SERVICE", "QUEUED",
            "QUEUE_MAX", "WORKERS", "READY", "INFLIGHT", "BREAKER");
    for (size_t i = 0; i < json_array_size (services); i++) {
        json_t *svc = json_array_get (services, i);
        printf ("%-*s %8lld %9lld %7lld %5lld %8lld  %s\n", name,
                s_json_str (svc, "name"), s_json_int (svc, "queued"),
                s_json_int (svc, "queue_max"), s_json_int (svc, "workers"),
                s_json_int (svc, "ready"), s_json_int (svc, "inflight"),
                s_json_str (svc, "breaker"));
    }
    int id = s_json_width (workers, "id", 6);
    int service = s_json_width (workers, "service", 7);
    int process = s_json_width (workers, "process", 7);
    printf ("\n%-*s %-*s %-*s %7s %8s %-9s %8s\n", id, "WORKER", service,
            "SERVICE", process, "PROCESS", "CREDIT", "INFLIGHT", "BREAKER",
            "IDLE_MS");
    for (size_t i = 0; i < json_array_size (workers); i++) {
        json_t *w = json_array_get (workers, i);
        printf ("%-*s %-*s %-*s %7lld %8lld %-9s %8lld\n", id,
                s_json_str (w, "id"), service, s_json_str (w, "service"),
                process, s_json_str (w, "process"), s_json_int (w, "credit"),
                s_json_int (w, "inflight"), s_json_str (w, "breaker"),
                s_json_int (w, "idle_ms"));
    }
    json_decref (root);
    return 0;
}

static int
s_cmd_status (int argc, char **argv)
{
    static const struct option options[] = {
        {"config", required_argument, NULL, 'c'},
        {"endpoint", required_argument, NULL, 'e'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *path = getenv ("FERRY_CONFIG");
    const char *endpoint = NULL;
    bool raw = false;
    int opt;
    optind = 1;
    argv[0] = (char *) "ferryctl status";
    while ((opt = getopt_long (argc, argv, "c:", options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'j':
            raw = true;
            break;
        case 'h':
            fputs (s_usage, stdout);
            return EXIT_SUCCESS;
        default:
            fputs ("Try 'ferryctl --help'.\n", stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "ferryctl status: unexpected argument '%s'\n",
                 argv[optind]);
        return EXIT_USAGE;
    }
    ferry_config_t *config = NULL;
    if (!endpoint) {
        if (!path || !*path) {
            fputs ("ferryctl status: no configuration: give -c FILE, set "
                   "FERRY_CONFIG, or --endpoint\n",
                   stderr);
            return EXIT_USAGE;
        }
        char err[512];
        config = ferry_config_load (path, err, sizeof err);
        if (!config) {
            fprintf (stderr, "ferryctl status: %s\n", err);
            return EXIT_FAILURE;
        }
        if (ferry_config_str (config, NULL, "broker.control", "",
                              &endpoint)) {
            fprintf (stderr, "ferryctl status: %s\n",
                     ferry_config_error (config));
            ferry_config_destroy (&config);
            return EXIT_FAILURE;
        }
        if (!*endpoint) {
            fprintf (stderr,
                     "ferryctl status: broker.control is not set in %s: "
                     "the broker has no control socket\n",
                     path);
            ferry_config_destroy (&config);
            return EXIT_FAILURE;
        }
    }
    char *json = s_status_query (endpoint);
    ferry_config_destroy (&config);
    int rc = EXIT_FAILURE;
    if (json && raw) {
        printf ("%s\n", json);
        rc = EXIT_SUCCESS;
    }
    else if (json && s_status_print (json) == 0)
        rc = EXIT_SUCCESS;
    free (json);
    return rc;
}

int
main (int argc, char **argv)
{
    ferry_log_init ("ferryctl", FERRY_LOG_INFO, false);
    if (argc < 2) {
        fputs (s_usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp (cmd, "--help") == 0 || strcmp (cmd, "-h") == 0
        || strcmp (cmd, "help") == 0) {
        fputs (s_usage, stdout);
        return EXIT_SUCCESS;
    }
    if (strcmp (cmd, "--version") == 0) {
        printf ("ferryctl %s\n", FERRY_VERSION_STRING);
        return EXIT_SUCCESS;
    }
    if (strcmp (cmd, "migrate") == 0)
        return s_cmd_migrate (argc - 1, argv + 1);
    if (strcmp (cmd, "dlq") == 0)
        return s_cmd_dlq (argc - 1, argv + 1);
    if (strcmp (cmd, "status") == 0)
        return s_cmd_status (argc - 1, argv + 1);
    fprintf (stderr, "ferryctl: unknown command '%s'\nTry 'ferryctl --help'.\n",
             cmd);
    return EXIT_USAGE;
}
