/*
 * sign.h — the engine's signing key (Ed25519, libsodium), kept in the data
 * directory. Used by signed capability tokens (lua/rubberduck/token.lua).
 *
 * The key file is DIR/token.key: the 32-byte Ed25519 seed, nothing else,
 * mode 0600, owned by whoever made it. It is created on first use (the
 * directory too, mode 0700, one level) and never rewritten: two processes
 * that race to create it end up with the same key (the file is written
 * under a temporary name and linked into place, so nobody ever reads half
 * a key). An existing key file is refused when it is not a regular file,
 * is a symbolic link, has the wrong size, or can be read or written by
 * group or others (its mode says so in the message).
 *
 * Functions are thread-safe (no shared state besides the file system).
 */
#ifndef RD_SIGN_H
#define RD_SIGN_H

#include "rd.h"

#define RD_SIGN_SEEDBYTES 32
#define RD_SIGN_PKBYTES 32
#define RD_SIGN_SKBYTES 64
#define RD_SIGN_BYTES 64
#define RD_SIGN_KEYFILE "token.key"

/* The 32 secret bytes of the key file DIR/NAME, with the rules above
 * (created on first use when `create` is set, with random bytes; refused
 * when others can reach it). `secret` is the caller's buffer: wipe it with
 * sodium_memzero when done. Returns RD_OK; RD_ENOENT (no such file and
 * create is 0), RD_EIO (file system error or a refused file: err names the
 * path and the reason), RD_EINVAL, RD_EINTERNAL (libsodium failed to
 * initialize). The signing key (token.key) and the key that encrypts
 * persisted results (results.key) are such files. */
#define RD_SECRET_BYTES 32
int rd__secret_file(const char *dir, const char *name, int create,
                    unsigned char secret[RD_SECRET_BYTES], rd_error *err);

/* Load the key of `dir` into pk/sk (caller-provided buffers; sk is
 * libsodium's 64-byte secret key, wipe it with sodium_memzero when done).
 * With `create` set, a missing key (and a missing `dir`) is made. Returns
 * RD_OK; RD_ENOENT (no key and create is 0), RD_EIO (file system error or a
 * refused key file: err names the path and the reason), RD_EINVAL (a NULL
 * argument), RD_EINTERNAL (libsodium failed to initialize). */
int rd__sign_key_load(const char *dir, int create, unsigned char pk[RD_SIGN_PKBYTES],
                      unsigned char sk[RD_SIGN_SKBYTES], rd_error *err);

/* Make the key pair of a 32-byte seed. Returns RD_OK or RD_EINTERNAL. */
int rd__sign_seed_keypair(const unsigned char seed[RD_SIGN_SEEDBYTES],
                          unsigned char pk[RD_SIGN_PKBYTES],
                          unsigned char sk[RD_SIGN_SKBYTES]);

/* Detached signature of msg[0..len) with sk into sig. Returns RD_OK or
 * RD_EINTERNAL. */
int rd__sign_detached(unsigned char sig[RD_SIGN_BYTES], const unsigned char *msg,
                      size_t len, const unsigned char sk[RD_SIGN_SKBYTES]);

/* 1 if sig is a valid signature of msg[0..len) by pk, else 0. */
int rd__sign_verify(const unsigned char sig[RD_SIGN_BYTES], const unsigned char *msg,
                    size_t len, const unsigned char pk[RD_SIGN_PKBYTES]);

#endif
