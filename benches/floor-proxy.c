/*
 * floor-proxy: the smallest correct single-threaded TCP proxy, the floor of
 * scripts/bench-proxy.sh (issue #11). It shows what any one-thread userspace
 * proxy reaches on a machine: whatever it costs, the kernel costs (accept,
 * connect, handshakes and FINs); nothing here could be made much cheaper.
 *
 *   cc -O2 -o floor-proxy benches/floor-proxy.c
 *   floor-proxy LISTEN_PORT BACKEND_PORT        # both on 127.0.0.1
 *
 * One thread, one epoll loop. Per connection: accept4 (NONBLOCK|CLOEXEC, in a
 * loop until EAGAIN), a nonblocking connect to the backend and, right after
 * it, one attempt to pass the request on (below), TCP_NODELAY on both
 * sides, recv/send through a 16 KiB buffer each way, half-close propagation (a
 * FIN read on one side becomes shutdown(SHUT_WR) on the other once everything
 * read before it is sent), and both closed once both directions are done or on
 * any error. Nothing more: no splice, no logging, no timeouts, no limits.
 *
 * Edge-triggered epoll for the connections, because it costs the fewest system
 * calls: each socket is registered once (EPOLL_CTL_ADD) with every event it
 * will ever need, and never modified as buffers fill and drain; close() removes
 * it. Readiness is remembered per socket and forgotten on EAGAIN or on a short
 * recv/send (the queue was empty / the send buffer full then; any later
 * arrival raises a new edge). Once EPOLLRDHUP was seen, the FIN is queued behind
 * the data, so no new edge will come: a short recv then is the end of stream
 * (the FIN is not read with a recv of its own), and the last bytes go out with
 * MSG_MORE so that they leave in one segment with the FIN. Accepted sockets
 * inherit TCP_NODELAY from the listener. Connections are reused through a free
 * list, not freed (free would hand memory back with brk now and then).
 * The listening socket is level-triggered: it
 * needs no such bookkeeping, and accept4 runs until EAGAIN anyway (if accept4
 * fails otherwise, e.g. EMFILE, the loop spins until an fd is free: a floor,
 * not a server).
 *
 * Right after the backend's connect (which on loopback has done the handshake
 * by the time it returns), one attempt to read the client's request and send
 * it on, before waiting for any event, as HAProxy does: if the connection is
 * not up yet the send says EAGAIN and the backend's EPOLLOUT follows.
 *
 * Two variants, for `scripts/bench-proxy.sh --pattern`:
 *   -DWAIT_FOR_CONNECT    no such attempt: the request waits for the backend's
 *                         EPOLLOUT (this file's behaviour until session 6, and
 *                         psflip's);
 *   -DNO_CLIENT_EPOLLOUT  the client socket is registered without EPOLLOUT and
 *                         taken as writable; EPOLLOUT is added (EPOLL_CTL_MOD)
 *                         only once a send to it comes up short, as HAProxy does.
 *   -DSEND_RING -luring   epoll and recv as above, but each send is queued on an
 *                         io_uring and all of a batch's sends go to the kernel in
 *                         one io_uring_submit after the batch: what psflip's
 *                         engine could do without leaving epoll (session 10).
 *                         A half sends one buffer at a time and reads again once
 *                         it is sent; a send the ring could not finish at once
 *                         (-EAGAIN, or short) waits for the socket's EPOLLOUT.
 *                         The ring's fd is in epoll, for sends that complete later.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef SEND_RING
#include <liburing.h>
static struct io_uring ring;
#endif

#define BUF 16384
#define EVENTS 512

struct half { /* bytes read from fd[i], to be sent to fd[!i] */
  size_t start, end;
  int eof;  /* recv returned 0 on fd[i] */
  int shut; /* shutdown(fd[!i], SHUT_WR) done */
  int inflight; /* SEND_RING: a send of buf[start..end) is in the ring */
  char buf[BUF];
};

struct conn {
  int fd[2];     /* 0: the client, 1: the backend */
  int rd[2];     /* fd may have something to read (or a FIN, or an error) */
  int wr[2];     /* fd may take more bytes */
  int rdhup[2];  /* EPOLLRDHUP seen on fd: a short recv is the end of stream */
  int dead;      /* closed in this batch of events; reused after it */
  int inflight;  /* SEND_RING: sends of this connection in the ring */
  struct conn *next; /* on the dead list, then on the free list */
  struct half h[2]; /* h[0]: client → backend, h[1]: backend → client */
};

static int one = 1;
static int epfd; /* for the EPOLL_CTL_MOD of NO_CLIENT_EPOLLOUT */

static int again(void) { return errno == EAGAIN || errno == EWOULDBLOCK; }

/* Moves bytes both ways until nothing can move. 0: keep the connection, 1: close
 * it (both directions done, or an error). */
static int pump(struct conn *c) {
  for (int progress = 1; progress;) {
    progress = 0;
    for (int i = 0; i < 2; i++) {
      struct half *h = &c->h[i];
      if (c->rd[i] && !h->eof && h->end < BUF && !h->inflight) {
        size_t want = BUF - h->end;
        ssize_t n = recv(c->fd[i], h->buf + h->end, want, 0);
        if (n > 0) {
          h->end += (size_t)n;
          progress = 1;
          if ((size_t)n < want) {
            if (c->rdhup[i]) h->eof = 1; /* the FIN is all that was left */
            c->rd[i] = 0;
          }
        } else if (n == 0) {
          h->eof = 1;
          progress = 1;
        } else if (again()) {
          c->rd[i] = 0;
        } else if (errno != EINTR) {
          return 1;
        }
      }
#ifdef SEND_RING
      if (c->wr[!i] && h->end > h->start && !h->inflight) {
        int more = h->eof ? MSG_MORE : 0;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        if (!sqe) {
          io_uring_submit(&ring);
          sqe = io_uring_get_sqe(&ring);
        }
        io_uring_prep_send(sqe, c->fd[!i], h->buf + h->start, h->end - h->start,
                           MSG_NOSIGNAL | more);
        io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | (uint64_t)i);
        h->inflight = 1;
        c->inflight++;
      }
      if (0) {
#else
      if (c->wr[!i] && h->end > h->start) {
#endif
        size_t want = h->end - h->start;
        int more = h->eof ? MSG_MORE : 0; /* the FIN follows at once */
        ssize_t n = send(c->fd[!i], h->buf + h->start, want, MSG_NOSIGNAL | more);
        if (n > 0) {
          h->start += (size_t)n;
          if (h->start == h->end) h->start = h->end = 0;
          progress = 1;
          if ((size_t)n < want) c->wr[!i] = 0;
        } else if (n < 0 && again()) {
          c->wr[!i] = 0;
#ifdef NO_CLIENT_EPOLLOUT
          if (!i == 0) { /* the client's send buffer is full: now watch it */
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
            ev.data.u64 = (uintptr_t)c;
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd[0], &ev);
          }
#endif
        } else if (n < 0 && errno != EINTR) {
          return 1;
        }
      }
      if (h->eof && h->start == h->end && !h->shut && !h->inflight) {
        /* Everything sent: pass the FIN on. If the other way is done too, close
         * both; close() sends the FIN itself. */
        if (c->h[!i].shut) return 1;
        if (shutdown(c->fd[!i], SHUT_WR) < 0) return 1;
        h->shut = 1;
      }
    }
  }
  return 0;
}

static struct conn *dead;  /* closed in this batch of events */
static struct conn *spare; /* closed before: reused by accept_all */

static void kill_conn(struct conn *c) {
#ifdef SEND_RING
  /* A queued send names the fd: it goes to the kernel before the close. */
  if (c->inflight) io_uring_submit(&ring);
#endif
  close(c->fd[0]);
  close(c->fd[1]);
  c->dead = 1;
  c->next = dead;
  dead = c;
}

static void accept_all(int ep, int lfd, const struct sockaddr_in *backend) {
  for (;;) {
    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return; /* EAGAIN: all taken */
    }
    int bfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct conn *c = spare;
    if (c) spare = c->next;
    else c = malloc(sizeof *c);
    if (bfd < 0 || !c) goto fail;
    setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(bfd, (const struct sockaddr *)backend, sizeof *backend) < 0 && errno != EINPROGRESS)
      goto fail;
    c->fd[0] = cfd;
    c->fd[1] = bfd;
    for (int i = 0; i < 2; i++) {
      c->rd[i] = c->wr[i] = c->rdhup[i] = 0;
      c->h[i].start = c->h[i].end = 0;
      c->h[i].eof = c->h[i].shut = 0;
    }
    c->dead = 0;
    c->inflight = c->h[0].inflight = c->h[1].inflight = 0;
    /* The side (0 or 1) rides in the low bit of the pointer (malloc aligns it). */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
#ifdef NO_CLIENT_EPOLLOUT
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    c->wr[0] = 1;
#endif
    ev.data.u64 = (uintptr_t)c;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev) < 0) goto fail;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (uintptr_t)c | 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, bfd, &ev) < 0) goto fail;
#ifndef WAIT_FOR_CONNECT
    /* The request, if there, goes out at once (see the top of the file). */
    c->rd[0] = c->wr[1] = 1;
    if (pump(c)) kill_conn(c);
#endif
    continue;
  fail:
    close(cfd);
    if (bfd >= 0) close(bfd);
    if (c) {
      c->next = spare;
      spare = c;
    }
  }
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
    fprintf(stderr, "usage: floor-proxy LISTEN_PORT BACKEND_PORT (both on 127.0.0.1)\n");
    return 2;
  }
  struct sockaddr_in listen_at = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lport)};
  struct sockaddr_in backend = {.sin_family = AF_INET, .sin_port = htons((uint16_t)bport)};
  listen_at.sin_addr.s_addr = backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epfd = ep;
  struct epoll_event lev = {.events = EPOLLIN, .data.u64 = 0};
  if (lfd < 0 || ep < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
      bind(lfd, (struct sockaddr *)&listen_at, sizeof listen_at) < 0 || listen(lfd, 4096) < 0 ||
      epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) {
    perror("floor-proxy: listen on 127.0.0.1");
    return 1;
  }

#ifdef SEND_RING
  if (io_uring_queue_init(4096, &ring, 0) < 0) {
    perror("floor-proxy: io_uring_queue_init");
    return 1;
  }
  struct epoll_event rev = {.events = EPOLLIN, .data.u64 = 2}; /* 2: the ring */
  if (epoll_ctl(ep, EPOLL_CTL_ADD, ring.ring_fd, &rev) < 0) {
    perror("floor-proxy: epoll_ctl ring");
    return 1;
  }
  static struct conn *waiting; /* dead, with sends still in the ring */
  int busy = 0; /* the last batch left sends or completions: do not sleep */
#endif
  static struct epoll_event evs[EVENTS];
  for (;;) {
#ifdef SEND_RING
    int n = epoll_wait(ep, evs, EVENTS, busy ? 0 : -1);
#else
    int n = epoll_wait(ep, evs, EVENTS, -1);
#endif
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("floor-proxy: epoll_wait");
      return 1;
    }
    for (int k = 0; k < n; k++) {
      if (evs[k].data.u64 == 0) {
        accept_all(ep, lfd, &backend);
        continue;
      }
      if (evs[k].data.u64 == 2) continue; /* the ring: its completions below */
      struct conn *c = (struct conn *)(uintptr_t)(evs[k].data.u64 & ~(uint64_t)1);
      int side = (int)(evs[k].data.u64 & 1);
      uint32_t e = evs[k].events;
      if (c->dead) continue; /* closed earlier in this batch */
      if (e & EPOLLERR) { /* a reset, or the backend refused */
        kill_conn(c);
        continue;
      }
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) c->rd[side] = 1;
      if (e & EPOLLRDHUP) c->rdhup[side] = 1;
      if (e & (EPOLLOUT | EPOLLHUP)) c->wr[side] = 1;
      if (pump(c)) kill_conn(c);
    }
#ifdef SEND_RING
    /* The batch's sends, then what their completions let move, until nothing is
     * queued. Sends complete at submit unless the socket is full. */
    busy = 1;
    for (int turn = 0; turn < 64; turn++) {
      if (io_uring_sq_ready(&ring)) io_uring_submit(&ring);
      struct io_uring_cqe *cqe;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        seen++;
        uint64_t d = io_uring_cqe_get_data64(cqe);
        struct conn *c = (struct conn *)(uintptr_t)(d & ~(uint64_t)1);
        int i = (int)(d & 1);
        struct half *h = &c->h[i];
        h->inflight = 0;
        c->inflight--;
        if (c->dead) continue;
        if (cqe->res > 0) {
          h->start += (size_t)cqe->res;
          if (h->start == h->end) h->start = h->end = 0;
          else c->wr[!i] = 0; /* short: the rest on EPOLLOUT */
        } else if (cqe->res == -EAGAIN) {
          c->wr[!i] = 0;
        } else {
          kill_conn(c);
          continue;
        }
        if (pump(c)) kill_conn(c);
      }
      io_uring_cq_advance(&ring, seen);
      if (!seen && !io_uring_sq_ready(&ring)) {
        busy = 0;
        break;
      }
    }
    while (dead) {
      struct conn *c = dead;
      dead = c->next;
      c->next = waiting;
      waiting = c;
    }
    for (struct conn **p = &waiting; *p;) {
      struct conn *c = *p;
      if (c->inflight) {
        p = &c->next;
        continue;
      }
      *p = c->next;
      c->next = spare;
      spare = c;
    }
#else
    while (dead) {
      struct conn *c = dead;
      dead = c->next;
      c->next = spare;
      spare = c;
    }
#endif
  }
}
