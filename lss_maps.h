/* lss_maps.h - cosmology theory, forward model of tomographic lensing and clustering maps, and map
 * statistics (FFTW3). Part of lss; includes lss_core.h.
 *
 * In exactly one C file:   #define LSS_MAPS_IMPLEMENTATION   before   #include "lss_maps.h"
 * (and LSS_CORE_IMPLEMENTATION once somewhere). Link with -lfftw3f -lfftw3 -lm (and -fopenmp).
 *
 * (manual, example and options: filled in by the sections below)
 *
 * Version 0.1.0.
 */
#ifndef LSS_MAPS_H
#define LSS_MAPS_H
#include "lss_core.h"

#ifdef LSS_IMPLEMENTATION
#ifndef LSS_MAPS_IMPLEMENTATION
#define LSS_MAPS_IMPLEMENTATION
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ==== THEORY DECLARATIONS (cosmology, n(z), Limber) ==== */
/* ==== END THEORY DECLARATIONS ==== */

/* ==== MAPS DECLARATIONS (shells, lognormal fields, projection, noise, statistics) ==== */
/* ==== END MAPS DECLARATIONS ==== */

#ifdef __cplusplus
}
#endif
#endif /* LSS_MAPS_H */

#ifdef LSS_MAPS_IMPLEMENTATION
#ifndef LSS_MAPS_IMPLEMENTATION_DONE
#define LSS_MAPS_IMPLEMENTATION_DONE
#include <math.h>
#include <string.h>

/* ==== THEORY IMPLEMENTATION ==== */
/* ==== END THEORY IMPLEMENTATION ==== */

/* ==== MAPS IMPLEMENTATION ==== */
/* ==== END MAPS IMPLEMENTATION ==== */

#endif /* LSS_MAPS_IMPLEMENTATION_DONE */
#endif /* LSS_MAPS_IMPLEMENTATION */
