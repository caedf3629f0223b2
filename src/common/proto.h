/*  proto.h: the ZeroMQ framing between ferry-edge, ferry-broker and
    ferry-worker (docs/protocol.md is the full description).

    Every message is a multipart message whose first frame is the protocol
    signature and whose second is a command.  Routing frames are short ASCII
    strings, so the broker routes without decoding the envelope, which rides
    untouched as the last frame.  Edges and workers use DEALER sockets (no
    empty delimiter frame); the broker's two ROUTER sockets prepend the
    peer identity.

    Edge -> broker (frontend):
      REQ   service msg_id deadline_ms flags payload
      HB
      BYE                       (answers the broker's BYE)
    Broker -> edge:
      REP   msg_id payload
      BYE                       (the broker is stopping: send nothing until
                                 a HB answer comes again)
      ACK   msg_id              (only for a REQ with flag "a": the broker
                                 holds the message; a refusal comes as a
                                 REP with a problem instead)
      HB    services            (space-separated services that have workers)
    Worker -> broker (backend):
      READY service credit [process]
                                (first message; announces the service;
                                 process = "<hostname>:<pid>" of the
                                 worker process, the same for all its
                                 actors, optional)
      REP   msg_id payload      (returns one credit)
      CREDIT n
      BACK  msg_id payload      (hands back a message it has not started:
                                 the broker queues it again at the head,
                                 counts no death, returns one credit)
      HB    [breaker]           (optional: the actor's pool breaker,
                                 "closed", "open" or "half-open"; the
                                 broker keeps the last one, for status)
      BYE                       (leaving: send nothing more; the broker
                                 waits for the REP or BACK of what it
                                 holds, then forgets it)
    Any peer -> broker (backend):
      DIED  process signal      (a worker supervisor: its child died by
                                 signal, e.g. "SIGABRT"; every worker whose
                                 READY named process is dead at once; never
                                 answered)
    Broker -> worker:
      REQ   msg_id deadline_ms attempt payload
                                (attempt: 1 on first delivery, +1 on each
                                 redelivery after a worker death, not after
                                 a BACK; workers also accept the old form
                                 without attempt, as attempt 1)
      DEAD  msg_id info payload (a poison message's dead letter: info is a
                                 JSON object text; uses no credit, gets no
                                 answer)
      HB
      BYE                       (broker does not know this worker: reconnect
                                 and send READY again)
    Client -> broker (control, broker.control, a ROUTER):
      STATUS                    (a DEALER asks for the broker's state)
    Broker -> client:
      STATUS json               (services, workers, edges, in-flight)

    deadline_ms is the absolute deadline, decimal milliseconds since the
    Unix epoch.  flags is a string of single-letter flags: "r" marks the
    request retryable (safe to redeliver after a worker dies), "a" asks
    for an ACK once the broker has queued or dispatched it.  */

#ifndef FERRY_PROTO_H_INCLUDED
#define FERRY_PROTO_H_INCLUDED

#define FERRY_PROTO "FRY1"

#define FERRY_CMD_REQ "REQ"
#define FERRY_CMD_REP "REP"
#define FERRY_CMD_HB "HB"
#define FERRY_CMD_READY "READY"
#define FERRY_CMD_CREDIT "CREDIT"
#define FERRY_CMD_BYE "BYE"
#define FERRY_CMD_ACK "ACK"
#define FERRY_CMD_BACK "BACK"
#define FERRY_CMD_DIED "DIED"
#define FERRY_CMD_DEAD "DEAD"
#define FERRY_CMD_STATUS "STATUS"

#define FERRY_FLAG_RETRYABLE 'r'
#define FERRY_FLAG_ACK 'a'

/*  Largest frame a peer accepts (ZMQ_MAXMSGSIZE): the edge's largest body
    (1 MiB by default, 16 MiB at most) plus the envelope's own fields.  */
#define FERRY_MAX_MESSAGE_DEFAULT (17 * 1024 * 1024)

/*  Service and operation names: [A-Za-z0-9_.-]{1,64}.  */
#define FERRY_NAME_MAX 64

#endif
