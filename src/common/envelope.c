/*  envelope.c: being written (see envelope.h).  */
#include "ferry.h"
#include "envelope.h"
int ferry_envelope_test (bool verbose);
int ferry_envelope_vectors_test (bool verbose);
int ferry_envelope_test (bool verbose) { (void) verbose; return 1; }
int ferry_envelope_vectors_test (bool verbose) { (void) verbose; return 1; }
