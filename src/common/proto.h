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
      READY service credit      (first message; announces the service)
      REP   msg_id payload      (returns one credit)
      CREDIT n
      BACK  msg_id payload      (hands back a message it has not started:
                                 the broker queues it again at the head,
                                 counts no death, returns one credit)
      HB
      BYE                       (leaving: send nothing more; the broker
                                 waits for the REP or BACK of what it
                                 holds, then forgets it)
    Broker -> worker:
      REQ   msg_id deadline_ms payload
      HB
      BYE                       (broker does not know this worker: reconnect
                                 and send READY again)

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

#define FERRY_FLAG_RETRYABLE 'r'
#define FERRY_FLAG_ACK 'a'

/*  Largest frame a peer accepts (ZMQ_MAXMSGSIZE): the edge's largest body
    (1 MiB by default, 16 MiB at most) plus the envelope's own fields.  */
#define FERRY_MAX_MESSAGE_DEFAULT (17 * 1024 * 1024)

/*  Service and operation names: [A-Za-z0-9_.-]{1,64}.  */
#define FERRY_NAME_MAX 64

#endif
