"""The operator layer: loading the compiled library (library), the one attribute validator
(validation), the NDArray/Symbol front (front), the three backends (native, custom_op,
stock_ops), the Gluon layer (gluon) and the compile commands of operators/ (build)."""
