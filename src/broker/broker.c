/* broker.c: being written. */
#include "broker.h"
