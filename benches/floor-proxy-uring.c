/*
 * floor-proxy-uring: benches/floor-proxy.c's job done through io_uring instead
 * of epoll, to learn whether a proxy that batches its system calls gets past
 * the epoll floor on this machine (issue #11: requests/s ≥ 1.10 × HAProxy's).
 *
 *   cc -O2 -o floor-proxy-uring benches/floor-proxy-uring.c -luring
 *   floor-proxy-uring LISTEN_PORT BACKEND_PORT      # both on 127.0.0.1
 *
 * One thread, one ring (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
 * where the kernel has them), one io_uring_enter per turn of the loop: it
 * submits everything the last batch of completions asked for and waits for at
 * least one more. A multishot accept takes the connections; per connection, the
 * backend's connect and the client's first recv go out together; then each way
 * is recv → send (the rest of a short send again) → recv, through a 16 KiB
 * buffer, with the backend's recvs armed to poll first (they are issued before
 * the backend could have answered). A recv of 0 passes the FIN on with
 * shutdown(SHUT_WR) once everything read before it is sent; when both ways are
 * done, or on any error, both sockets are shut down (which ends their pending
 * recvs) and closed, and the connection is reused once no operation of it is
 * left in the ring. shutdown and close are plain system calls, as in the epoll
 * floor. No timeouts, no limits, no logging: a floor, not a server.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define ENTRIES 4096

enum op { OP_ACCEPT = 0, OP_CONNECT, OP_RECV0, OP_RECV1, OP_SEND0, OP_SEND1 };

struct half { /* bytes read from fd[i], to be sent to fd[!i] */
  size_t start, end;
  int eof, shut;
  char buf[BUF];
};

struct conn {
  int fd[2];       /* 0: the client, 1: the backend */
  int connected;   /* the backend's connect completed */
  int closing;     /* both shut down and closed; waiting for inflight == 0 */
  int inflight;    /* operations of this connection in the ring */
  struct conn *next;
  struct half h[2]; /* h[0]: client → backend, h[1]: backend → client */
} __attribute__((aligned(8)));

static struct io_uring ring;
static struct conn *spare;
static int one = 1;
static int lfd;
static struct sockaddr_in backend;

static struct io_uring_sqe *sqe_for(struct conn *c, enum op op) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
  if (!sqe) { /* the ring is full: hand what is queued to the kernel */
    io_uring_submit(&ring);
    sqe = io_uring_get_sqe(&ring);
  }
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | (uint64_t)op);
  if (c) c->inflight++;
  return sqe;
}

static void arm_accept(void) {
  io_uring_prep_multishot_accept(sqe_for(NULL, OP_ACCEPT), lfd, NULL, NULL, SOCK_CLOEXEC);
}

static void recv_half(struct conn *c, int i, int poll_first) {
  struct half *h = &c->h[i];
  struct io_uring_sqe *sqe = sqe_for(c, i ? OP_RECV1 : OP_RECV0);
  io_uring_prep_recv(sqe, c->fd[i], h->buf + h->end, BUF - h->end, 0);
  if (poll_first) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
}

static void send_half(struct conn *c, int i) {
  struct half *h = &c->h[i];
  int more = h->eof ? MSG_MORE : 0;
  io_uring_prep_send(sqe_for(c, i ? OP_SEND1 : OP_SEND0), c->fd[!i], h->buf + h->start,
                     h->end - h->start, MSG_NOSIGNAL | more);
}

static void kill_conn(struct conn *c) {
  if (c->closing) return;
  c->closing = 1;
  for (int i = 0; i < 2; i++) {
    shutdown(c->fd[i], SHUT_RDWR); /* ends a pending recv */
    close(c->fd[i]);
  }
}

static void release(struct conn *c) {
  if (c->closing && c->inflight == 0) {
    c->next = spare;
    spare = c;
  }
}

/* Half i has everything it read sent: pass its FIN on, or read again. */
static void half_drained(struct conn *c, int i) {
  struct half *h = &c->h[i];
  h->start = h->end = 0;
  if (!h->eof) {
    recv_half(c, i, i == 1);
    return;
  }
  if (h->shut) return;
  if (c->h[!i].shut) { /* the other way is done too */
    kill_conn(c);
    return;
  }
  if (shutdown(c->fd[!i], SHUT_WR) < 0) {
    kill_conn(c);
    return;
  }
  h->shut = 1;
}

static void on_accept(int res, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) arm_accept();
  if (res < 0) return;
  int bfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct conn *c = spare;
  if (c) spare = c->next;
  else c = aligned_alloc(8, sizeof *c);
  if (bfd < 0 || !c) {
    close(res);
    if (bfd >= 0) close(bfd);
    if (c) {
      c->next = spare;
      spare = c;
    }
    return;
  }
  setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd[0] = res;
  c->fd[1] = bfd;
  c->connected = c->closing = c->inflight = 0;
  for (int i = 0; i < 2; i++) {
    c->h[i].start = c->h[i].end = 0;
    c->h[i].eof = c->h[i].shut = 0;
  }
  io_uring_prep_connect(sqe_for(c, OP_CONNECT), bfd, (struct sockaddr *)&backend, sizeof backend);
  recv_half(c, 0, 0);
}

static void on_conn(struct conn *c, enum op op, int res) {
  c->inflight--;
  if (c->closing) {
    release(c);
    return;
  }
  if (op == OP_CONNECT) {
    if (res < 0) {
      kill_conn(c);
    } else {
      c->connected = 1;
      recv_half(c, 1, 1);
      struct half *h = &c->h[0];
      if (h->end > h->start) send_half(c, 0); /* the request came first */
      else if (h->eof) half_drained(c, 0);
    }
    release(c);
    return;
  }
  int i = (op == OP_RECV1 || op == OP_SEND1);
  struct half *h = &c->h[i];
  if (op == OP_RECV0 || op == OP_RECV1) {
    if (res < 0) {
      kill_conn(c);
    } else {
      if (res == 0) h->eof = 1;
      h->end += (size_t)res;
      if (!c->connected) {
        /* wait for the connect; it sends what is here */
      } else if (h->end > h->start) {
        send_half(c, i);
      } else {
        half_drained(c, i);
      }
    }
  } else { /* a send */
    if (res < 0) {
      kill_conn(c);
    } else {
      h->start += (size_t)res;
      if (h->start < h->end) send_half(c, i);
      else half_drained(c, i);
    }
  }
  release(c);
}

static int port_arg(const char *s) {
  char *end;
  long p = strtol(s, &end, 10);
  return (*s && !*end && p > 0 && p < 65536) ? (int)p : -1;
}

int main(int argc, char **argv) {
  int lport = argc == 3 ? port_arg(argv[1]) : -1;
  int bport = argc == 3 ? port_arg(argv[2]) : -1;
  if (lport < 0 || bport < 0) {
    fprintf(stderr, "usage: floor-proxy-uring LISTEN_PORT BACKEND_PORT (both on 127.0.0.1)\n");
    return 2;
  }
  struct sockaddr_in listen_at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lport)};
  backend = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)bport)};
  listen_at.sin_addr.s_addr = backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
      bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) < 0 || listen(lfd, 4096) < 0) {
    perror("floor-proxy-uring: listen on 127.0.0.1");
    return 1;
  }
  int err = io_uring_queue_init(ENTRIES, &ring,
                                IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
  if (err == -EINVAL) err = io_uring_queue_init(ENTRIES, &ring, 0);
  if (err < 0) {
    fprintf(stderr, "floor-proxy-uring: io_uring_queue_init: %s\n", strerror(-err));
    return 1;
  }
  arm_accept();
  for (;;) {
    err = io_uring_submit_and_wait(&ring, 1);
    if (err < 0 && err != -EINTR) {
      fprintf(stderr, "floor-proxy-uring: io_uring_submit_and_wait: %s\n", strerror(-err));
      return 1;
    }
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      uint64_t d = io_uring_cqe_get_data64(cqe);
      enum op op = (enum op)(d & 7);
      struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)7);
      if (op == OP_ACCEPT) on_accept(cqe->res, cqe->flags);
      else on_conn(c, op, cqe->res);
      seen++;
    }
    io_uring_cq_advance(&ring, seen);
  }
}
