/* file_map.h — a whole regular file mapped read-only, for the file parsers
 * (GGUF models and adapters, safetensors) that validate a buffer in place.
 *
 * Not here: parsing; writing files.
 */
#ifndef PPD_FILE_MAP_H
#define PPD_FILE_MAP_H

#include <stddef.h>

/* Map path.  An empty file gives *base = NULL, *size = 0 (the parser reports
 * it).  ENG_E_IO with "PATH: open|stat|mmap: reason" in err otherwise. */
int eng_file_map(const char *path, const void **base, size_t *size, char *err, size_t err_cap);
void eng_file_unmap(const void *base, size_t size);   /* accepts NULL */

#endif
