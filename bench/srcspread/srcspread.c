/* LD_PRELOAD shim for the benchmark's load generators: spreads their connections to 127.0.0.1 over
 * SRCSPREAD source addresses (127.0.0.2, .3, ...), as many clients would arrive. wrk cannot bind a
 * source address, and hapair steers each source address to one worker: without this, one load
 * generator is one client and meets one worker. Loopback only; nothing leaves the machine. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static unsigned next;

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!real_connect)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *spread = getenv("SRCSPREAD");
    int n = spread ? atoi(spread) : 0;
    if (n > 1 && addr->sa_family == AF_INET &&
        ((const struct sockaddr_in *)addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (__atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) % n));
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one); /* the port at connect() */
        bind(fd, (struct sockaddr *)&src, sizeof src); /* on failure the kernel picks, as before */
    }
    return real_connect(fd, addr, len);
}
