/*
 * proto.c — blocking frame I/O for worker processes. See proto.h.
 */
#include "sandbox/proto.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

int rd__write_full(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

int rd__read_full(int fd, void *p, size_t n) {
  char *c = p;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, c + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) return got == 0 ? 1 : -1;
    got += (size_t)r;
  }
  return 0;
}

int rd__frame_send(int fd, const char *p, size_t n) {
  if (n > RD_FRAME_MAX) {
    errno = EMSGSIZE;
    return -1;
  }
  unsigned char h[4] = {(unsigned char)n, (unsigned char)(n >> 8),
                        (unsigned char)(n >> 16), (unsigned char)(n >> 24)};
  /* One system call for a frame that fits the socket buffer. */
  struct iovec iov[2] = {{h, 4}, {(void *)p, n}};
  ssize_t w;
  do w = writev(fd, iov, 2); while (w < 0 && errno == EINTR);
  if (w < 0) return -1;
  if ((size_t)w < 4) {
    if (rd__write_full(fd, h + w, 4 - (size_t)w) != 0) return -1;
    w = 4;
  }
  return rd__write_full(fd, p + (w - 4), n - (size_t)(w - 4));
}

int rd__frame_recv(int fd, rd_buf *b) {
  unsigned char h[4];
  int rc = rd__read_full(fd, h, 4);
  if (rc != 0) return rc;
  uint32_t n = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
               (uint32_t)h[3] << 24;
  if (n > RD_FRAME_MAX) {
    errno = EMSGSIZE;
    return -1;
  }
  b->len = 0;
  if (rd__buf_reserve(b, n) != RD_OK) {
    errno = ENOMEM;
    return -1;
  }
  if (n && rd__read_full(fd, b->data, n) != 0) return -1;
  b->len = n;
  b->data[n] = '\0';
  return 0;
}
