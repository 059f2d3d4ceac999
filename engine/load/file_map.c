/* file_map.c — read-only whole-file mappings (see file_map.h). */
#include "engine/load/file_map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/err.h"

int eng_file_map(const char *path, const void **base, size_t *size, char *err, size_t err_cap) {
    struct stat st;
    int fd, rc = 0;
    *base = NULL;
    *size = 0;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return eng_err_set(err, err_cap, ENG_E_IO, "%s: open: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0)
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: open: not a regular file", path);
    else if ((uint64_t)st.st_size > SIZE_MAX)
        rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: open: file too large to map", path);
    else if (st.st_size > 0) {   /* mmap of zero bytes fails; the parser reports an empty file */
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) rc = eng_err_set(err, err_cap, ENG_E_IO, "%s: mmap: %s", path, strerror(errno));
        else *base = map, *size = (size_t)st.st_size;
    }
    close(fd);
    return rc;
}

void eng_file_unmap(const void *base, size_t size) {
    if (base) munmap((void *)base, size);
}
