/*  json.c: being written (see json.h).  */
#include "ferry.h"
#include "json.h"
int ferry_json_test (bool verbose); int ferry_json_test (bool verbose) { (void) verbose; return 1; }
