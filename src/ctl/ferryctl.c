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

    Exit codes: 0 success, 1 failure, 2 usage error.  */

#include "ferry.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdlib.h>
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
    fprintf (stderr, "ferryctl: unknown command '%s'\nTry 'ferryctl --help'.\n",
             cmd);
    return EXIT_USAGE;
}
